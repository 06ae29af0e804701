"""Command-line value types: --layers, counts and numbers are parsed or refused with the text given."""

import argparse
import re

import pytest

from headsteer.cli.flags import LayerSelection, count, non_negative_float, non_negative_int, positive_float
from headsteer.errors import ConfigError


@pytest.mark.parametrize(
    "text, layers",
    [("all", [0, 1, 2, 3, 4]), ("0,2,4", [0, 2, 4]), ("0-3", [0, 1, 2, 3]), ("4,0-1", [4, 0, 1]), ("2", [2])],
)
def test_layer_selections_that_parse(text, layers):
    assert LayerSelection.parse(text).resolve(5) == layers


@pytest.mark.parametrize(
    "text, message",
    [
        ("0,0", "layer 0 is given twice in '0,0'"),
        ("0-3,2", "layer 2 is given twice"),
        ("5-2", "range 5-2 in '5-2' is reversed; write 2-5"),
        ("x", "'x' is not 'all', a list like 0,2,4 or a range like 0-8"),
        ("", "is not 'all'"),
        ("1,,2", "(item '')"),
        ("-1", "is not 'all'"),
        ("0-", "is not 'all'"),
    ],
)
def test_layer_selections_that_are_refused(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        LayerSelection.parse(text)


def test_a_layer_the_model_lacks_is_refused_naming_the_flag():
    huge = LayerSelection.parse("3-99999999999")  # kept as a range: nothing is expanded before the check
    with pytest.raises(ConfigError, match=r"--layers 3-99999999999: layer 99999999999 is out of range: .* 0\.\.17"):
        huge.resolve(18)


@pytest.mark.parametrize(
    "parse, text, value",
    [(count, "3", 3), (non_negative_int, "0", 0), (non_negative_float, "0", 0.0), (positive_float, "0.5", 0.5)],
)
def test_numbers_in_range_parse(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (count, "0", "expected a whole number >= 1, got 0"),
        (count, "x", "expected a whole number >= 1, got 'x'"),
        (non_negative_int, "-1", "expected a whole number >= 0, got -1"),
        (non_negative_float, "-0.1", "expected a finite number >= 0, got '-0.1'"),
        (non_negative_float, "nan", "expected a finite number >= 0, got 'nan'"),
        (positive_float, "0", "expected a finite number > 0, got '0'"),
        (positive_float, "inf", "expected a finite number > 0, got 'inf'"),
    ],
)
def test_numbers_out_of_range_are_refused(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse(text)
