"""Strict checks of JSON read from disk: exactly the expected keys, each of the expected type.

JSON has one number type, so the kinds are checked the way a reader means
them: ``int`` is a number written without a fraction (``4``, not ``4.0``,
``"4"`` or ``true``); ``float`` is any number but a bool; ``None`` is JSON
``null``. Every error names the field by its path inside the document
(``model.n_heads``, ``training.pairs[3].input``); the caller adds the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Union

from headsteer.errors import HeadsteerError

# One kind, or a tuple of kinds any of which is accepted (e.g. ``(int, type(None))``).
Kind = Union[type, tuple[type, ...]]
# An object whose keys and value kinds :func:`check_object` has checked against a spec: its values are
# typed by that spec, which the type checker cannot see, hence Any.
Checked = dict[str, Any]

_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "a JSON object",
    list: "a JSON list",
    type(None): "null",
}


def field_name(path: str) -> str:
    """How a message names the field at ``path`` ('' is the whole document)."""
    return f"field {path!r}" if path else "the top-level object"


def is_kind(value: object, kind: Kind) -> bool:
    """Whether ``value`` is of ``kind`` in the module docstring's sense (bools are never numbers)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k in (int, float) and isinstance(value, bool):
            continue
        if (k is float and isinstance(value, (int, float))) or isinstance(value, k):
            return True
    return False


def describe_kind(kind: Kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_NAMES.get(k, k.__name__) for k in kinds)


def show(value: object, limit: int = 80) -> str:
    """``value`` as JSON spells it (``true``, ``"4"``, ``4.0``), cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # not JSON at all (a value built in Python)
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_value(value: object, kind: Kind, path: str, error: type[HeadsteerError]) -> object:
    """``value`` if it is of ``kind``; else ``error`` naming the field at ``path``."""
    if not is_kind(value, kind):
        raise error(f"{field_name(path)} must be {describe_kind(kind)}, got {show(value)}")
    return value


def check_object(data: object, spec: Mapping[str, Kind], path: str, error: type[HeadsteerError]) -> Checked:
    """``data`` if it is an object with exactly ``spec``'s keys, each value of its kind; else ``error``."""
    if not isinstance(data, dict):
        raise error(f"{field_name(path)} must be a JSON object with keys {sorted(spec)}, got {show(data)}")
    missing, extra = sorted(set(spec) - set(data)), sorted(set(data) - set(spec))
    if missing or extra:
        problems = ([f"missing key(s) {missing}"] if missing else []) + (
            [f"unexpected key(s) {extra}"] if extra else []
        )
        raise error(f"{field_name(path)}: {' and '.join(problems)}; expected exactly {sorted(spec)}")
    for key, kind in spec.items():
        check_value(data[key], kind, child(path, key), error)
    return data


def child(path: str, key: str | int) -> str:
    """The path of ``key`` (an object key or a list index) inside the field at ``path``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key
