"""Rule-understanding tasks: (input, output) word pairs, loaded by name or path.

Where a task is found, in order:

1. ``name_or_path`` is an existing ``.json`` file;
2. ``builtin/<name>``: the small sets shipped in ``headsteer/data`` (written for
   this project, so demos and tests run with no data directory);
3. ``<data_dir>/<name>.json`` with ``data_dir`` the argument, else the
   ``HEADSTEER_DATA_DIR`` environment variable, else the first existing
   ``shared/datasets/function_vectors`` beside the checkout or the working
   directory (Todd et al.'s ``antonym``, ``synonym``, ``english-french``,
   ``english-german``).

A file holds a JSON list of ``{"input": str, "output": str}`` in UTF-8. Pairs
whose input repeats an earlier pair's are dropped at load (the first is kept):
a repeated input would be trained on twice or scored twice, and the task
records how many were dropped (``Task.dropped_duplicates``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from pathlib import Path

from headsteer.errors import ConfigError, TaskError

BUILTIN_PREFIX = "builtin/"
DATA_DIR_ENV = "HEADSTEER_DATA_DIR"
TODD_TASKS = ("antonym", "synonym", "english-french", "english-german")


@dataclass(frozen=True)
class Pair:
    input: str
    output: str

    def label(self, width: int = 40) -> str:
        """``'hot' → 'cold'`` for messages, each side cut to ``width`` characters."""
        return f"{clipped(self.input, width)!r} → {clipped(self.output, width)!r}"


def clipped(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters (an ellipsis marks the cut), for messages."""
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class Task:
    name: str
    pairs: tuple[Pair, ...]
    source: str
    dropped_duplicates: int = 0  # pairs left out at load because their input repeats an earlier pair's

    def __len__(self) -> int:
        return len(self.pairs)

    @cached_property
    def sha256(self) -> str:
        """Hash of the pairs as loaded (in order, duplicates dropped): results and interventions record it."""
        return pairs_sha256(self.pairs)


def pairs_sha256(pairs: Sequence[Pair]) -> str:
    """sha256 of ``[[input, output], ...]`` as compact UTF-8 JSON."""
    text = json.dumps([[p.input, p.output] for p in pairs], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def builtin_task_names() -> list[str]:
    root = files("headsteer").joinpath("data")
    return sorted(BUILTIN_PREFIX + p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json"))


def shared_dataset_dir(env_var: str, name: str) -> Path | None:
    """``$env_var``, else the first existing ``shared/datasets/<name>`` beside the checkout or the working directory."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    for base in (checkout.parent, Path.cwd().parent, Path.cwd()):
        candidate = base / "shared" / "datasets" / name
        if candidate.is_dir():
            return candidate
    return None


def default_data_dir() -> Path | None:
    """The function-vector data directory used when none is given, or None."""
    return shared_dataset_dir(DATA_DIR_ENV, "function_vectors")


def load_task(name_or_path: str, data_dir: str | Path | None = None) -> Task:
    """Load a task by file path, ``builtin/<name>``, or name inside the data directory."""
    path = Path(name_or_path)
    if path.suffix == ".json":
        if not path.is_file():  # a file was meant: say so, rather than look for "<name>.json.json"
            raise TaskError(f"task file {path} " + ("is a folder" if path.is_dir() else "does not exist"))
        return parse_task_file(path, name=path.stem)
    if name_or_path.startswith(BUILTIN_PREFIX):
        resource = files("headsteer").joinpath("data").joinpath(name_or_path[len(BUILTIN_PREFIX) :] + ".json")
        if not resource.is_file():
            raise TaskError(f"unknown built-in task {name_or_path!r}; built-in: {builtin_task_names()}")
        return parse_task_text(resource.read_text(encoding="utf-8"), name_or_path, str(resource))
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    if directory is None:
        raise TaskError(
            f"task {name_or_path!r}: no data directory (pass data_dir, set ${DATA_DIR_ENV}, or place "
            f"shared/datasets/function_vectors beside the checkout); built-in tasks: {builtin_task_names()}"
        )
    candidate = directory / f"{name_or_path}.json"
    if not candidate.is_file():
        known = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
        raise TaskError(
            f"unknown task {name_or_path!r}: no {candidate}; tasks in {directory}: {known}; "
            f"built-in: {builtin_task_names()}"
        )
    return parse_task_file(candidate, name=name_or_path)


def parse_task_file(path: Path, name: str) -> Task:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TaskError(f"task {name!r}: cannot read {path}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is allowed, as editors write it
    except UnicodeDecodeError as err:
        raise TaskError(
            f"task {name!r} ({path}) is not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
            "cannot be decoded; save the file as UTF-8"
        ) from None
    return parse_task_text(text, name, str(path))


def parse_task_text(text: str, name: str, source: str) -> Task:
    """Validate a JSON task: a non-empty list of objects with string ``input`` and ``output``."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskError(f"task {name!r} ({source}) is not valid JSON: {err}") from None
    if not isinstance(raw, list):
        raise TaskError(f"task {name!r} ({source}) must be a JSON list of {{'input','output'}} objects")
    if not raw:
        raise TaskError(f"task {name!r} ({source}) is empty: it holds no pairs")
    pairs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("input", "output")):
            raise TaskError(f"task {name!r} ({source}), entry {i}: expected string 'input' and 'output', got {item!r}")
        if not item["input"].strip() or not item["output"].strip():
            raise TaskError(f"task {name!r} ({source}), entry {i}: empty input or output")
        pairs.append(Pair(item["input"].strip(), item["output"].strip()))
    return task_from_pairs(pairs, name, source)


def task_from_pairs(pairs: Sequence[Pair], name: str = "pairs", source: str = "a list of pairs") -> Task:
    """A task of ``pairs``, a repeated input's later pairs dropped (and counted), as when a file is loaded."""
    kept = first_per_input(pairs)
    return Task(name, tuple(kept), source, dropped_duplicates=len(pairs) - len(kept))


def first_per_input(pairs: Sequence[Pair]) -> list[Pair]:
    """``pairs`` without those whose input repeats an earlier pair's (order kept)."""
    seen: set[str] = set()
    kept = []
    for pair in pairs:
        if pair.input not in seen:
            seen.add(pair.input)
            kept.append(pair)
    return kept


def split_task(
    task: Task | Sequence[Pair], n_train: int = 10, seed: int = 0, max_test: int | None = None
) -> tuple[list[Pair], list[Pair]]:
    """A seeded split: ``n_train`` training pairs and the rest (at most ``max_test``) for test.

    ``task`` is a :class:`Task` or a list of pairs (repeated inputs dropped, as
    at load). Test pairs never share an input with a training pair.
    ``max_test`` is None (every remaining pair) or >= 1; a split with no test
    pair is refused.
    """
    if not isinstance(task, Task):
        task = task_from_pairs(list(task))
    if not isinstance(n_train, int) or n_train < 1:
        raise ConfigError(f"n_train must be an int >= 1, got {n_train!r}")
    if max_test is not None and (not isinstance(max_test, int) or max_test < 1):
        raise ConfigError(f"max_test must be None (every held-out pair) or an int >= 1, got {max_test!r}")
    if len(task) <= n_train:
        raise TaskError(
            f"task {task.name!r} has {len(task)} pairs: too few for n_train={n_train} "
            "training pairs plus a test set (lower --n-train)"
        )
    order = list(task.pairs)
    random.Random(seed).shuffle(order)
    train = order[:n_train]
    seen = {p.input for p in train}
    test = [p for p in order[n_train:] if p.input not in seen]
    if not test:
        raise TaskError(
            f"task {task.name!r}: no test pair is left with seed {seed} (every other pair repeats "
            f"a training input); use fewer training pairs (--n-train) or more distinct inputs"
        )
    return train, test if max_test is None else test[:max_test]
