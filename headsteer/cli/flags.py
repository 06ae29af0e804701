"""Command-line value types: each parses one flag's text or refuses it in one line.

argparse prefixes a type's message with the flag (``argument --max-test:
...``), so every refusal names the flag and the text given. Checks that need
the model (a layer index against its number of layers) are made by
:meth:`LayerSelection.resolve` once the model's config is read, still before
its weights load.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from headsteer.errors import ConfigError


def _refuse(message: str) -> NoReturn:
    raise argparse.ArgumentTypeError(message)


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            _refuse(f"expected a whole number >= {low}, got {text!r}")
        if value < low:
            _refuse(f"expected a whole number >= {low}, got {value}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def _finite_float(lowest: str, accepts: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            _refuse(f"expected a number {lowest}, got {text!r}")
        if not math.isfinite(value) or not accepts(value):
            _refuse(f"expected a finite number {lowest}, got {text!r}")
        return value

    parse.__name__ = f"float{lowest}"
    return parse


count = _int_at_least(1)  # how many: steps, training pairs, seeds, heads, ...
non_negative_int = _int_at_least(0)  # a layer index, or a count where 0 means "all"
non_negative_float = _finite_float(">= 0", lambda x: x >= 0)  # penalty weights
positive_float = _finite_float("> 0", lambda x: x > 0)  # step sizes


def _first_repeat(values: Sequence[object]) -> object | None:
    """The first value that occurs twice in ``values``, or None."""
    seen: list[object] = []
    for value in values:
        if value in seen:
            return value
        seen.append(value)
    return None


class Distinct(argparse.Action):
    """A list flag (``nargs="+"``) whose values must differ: a repeat would be run, or counted, twice."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        twice = _first_repeat(values)
        if twice is not None:
            parser.error(f"argument {option_string}: {twice} is given twice")
        setattr(namespace, self.dest, list(values))


class AppendDistinct(argparse.Action):
    """A repeatable flag (``action="append"``) whose occurrences must differ."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, self.dest) or [])
        value = tuple(values) if isinstance(values, list) else values
        if value in items:
            shown = " ".join(value) if isinstance(value, tuple) else value
            parser.error(f"argument {option_string}: {shown} is given twice")
        setattr(namespace, self.dest, [*items, value])


@dataclass(frozen=True)
class LayerSelection:
    """``--layers`` as given: ``all``, or distinct layer indices in the order written.

    Accepted: ``all``; a list ``0,2,4``; an inclusive range ``0-8``; or a mix
    ``0-3,8``. Refused: anything else, a reversed range, an empty item, a
    layer named twice. Kept as ranges, so a huge range costs nothing before
    :meth:`resolve` refuses it.
    """

    text: str
    spans: tuple[range, ...] | None  # None: every layer of the model

    @classmethod
    def parse(cls, text: str) -> LayerSelection:
        if text.strip() == "all":
            return cls(text, None)
        spans: list[range] = []
        for item in text.split(","):
            span = _layer_span(item.strip(), text)
            for earlier in spans:
                if max(span.start, earlier.start) < min(span.stop, earlier.stop):
                    _refuse(f"layer {max(span.start, earlier.start)} is given twice in {text!r}")
            spans.append(span)
        return cls(text, tuple(spans))

    def resolve(self, n_layers: int, flag: str = "--layers") -> list[int]:
        """The layer indices for a model with ``n_layers`` layers; refuses one it does not have."""
        if self.spans is None:
            return list(range(n_layers))
        highest = max(span.stop - 1 for span in self.spans)
        if highest >= n_layers:
            raise ConfigError(
                f"{flag} {self.text}: layer {highest} is out of range: this model has layers 0..{n_layers - 1}"
            )
        return [layer for span in self.spans for layer in span]


def _layer_span(item: str, text: str) -> range:
    """One comma-separated item of ``--layers``: ``4`` or ``0-8``."""
    low, dash, high = item.partition("-")
    if not low.isdecimal() or (dash and not high.isdecimal()):
        _refuse(f"{text!r} is not 'all', a list like 0,2,4 or a range like 0-8 (item {item!r})")
    if dash and int(high) < int(low):
        _refuse(f"range {item} in {text!r} is reversed; write {high}-{low}")
    return range(int(low), int(high if dash else low) + 1)
