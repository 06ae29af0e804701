"""Bad input raised by the library is a HeadsteerError (what the CLI reports) and still the builtin it refines."""

import sys

import pytest

import headsteer as hs
from headsteer.errors import ConfigError, HeadsteerError, TaskError
from headsteer.hooks import check_layer
from headsteer.paper.opinionqa import OpinionQAError
from headsteer.paper.table import TableConfig


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: hs.FitConfig(lr=-1.0), "lr must be a finite number > 0"),
        (lambda: hs.FitConfig.from_dict({"layer": 1, "bogus": 2}), "unknown FitConfig fields"),
        (lambda: hs.get_template("nope"), "unknown template 'nope'"),
        (lambda: TableConfig(n_train=4), "n_train must be >= 5 for 'Δ tuned \\(CV\\)'"),
    ],
)
def test_config_errors_are_headsteer_errors_and_value_errors(make, message):
    with pytest.raises(ConfigError, match=message) as caught:
        make()
    assert isinstance(caught.value, HeadsteerError) and isinstance(caught.value, ValueError)


def test_a_table_without_cross_validation_takes_four_training_pairs():
    assert TableConfig(n_train=4, methods=("0-shot", "Δ (ours)")).n_train == 4


def test_a_layer_out_of_range_is_a_config_error(gemma_tiny):
    with pytest.raises(ConfigError, match="layer 3 is out of range: this model has layers 0..2"):
        check_layer(gemma_tiny, 3)


def test_option_kl_on_pairs_is_refused_before_any_forward(gemma_tiny, monkeypatch):
    monkeypatch.setattr(
        sys.modules["headsteer.fitting.loop"], "optimize", lambda *a, **k: pytest.fail("the fit started")
    )
    pairs = hs.load_task("builtin/antonym").pairs[:3]
    with pytest.raises(ConfigError, match="loss 'option_kl' needs option targets .* as headsteer opinion does"):
        hs.fit(gemma_tiny, pairs, hs.get_template("qa"), hs.FitConfig(layer=1, loss="option_kl"))


def test_opinionqa_errors_are_task_errors():
    assert issubclass(OpinionQAError, TaskError) and issubclass(OpinionQAError, ValueError)
