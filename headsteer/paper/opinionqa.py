"""OpinionQA (Santurkar et al. 2023): survey questions and each group's answer distribution.

The data directory holds one folder per Pew American Trends Panel wave, each with

* ``info.csv``: one row per question: ``key``, ``question`` and ``references``
  (the answer options, a Python list literal, in the survey's order);
* ``{CREGION,INCOME,POLIDEOLOGY,NONE}_data.json``: per question key, the answer
  counts of every group of that attribute (``{"Northeast": {"Very safe": 434.0, ...}}``).

A group's target for a question is its counts over the question's options
without "Refused", normalised to sum to 1; a question where the group gave no
such answer is skipped. Where it is found: ``data_dir``, else
``$HEADSTEER_OPINIONQA_DIR``, else ``shared/datasets/opinionqa`` beside the
checkout or the working directory.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from headsteer.errors import ConfigError, TaskError
from headsteer.tasks import shared_dataset_dir

ATTRIBUTES = ("CREGION", "INCOME", "POLIDEOLOGY", "NONE")
DROPPED_OPTIONS = ("Refused",)
DATA_DIR_ENV = "HEADSTEER_OPINIONQA_DIR"
# The groups of the paper's Table 3.
PAPER_GROUPS = ("$100,000 or more", "Less than $30,000", "Moderate", "Northeast")


class OpinionQAError(TaskError):
    """The OpinionQA data is missing or malformed, or a group is unknown."""


@dataclass(frozen=True)
class OpinionQuestion:
    key: str
    question: str
    options: tuple[str, ...]  # without "Refused", in the survey's order
    target: tuple[float, ...]  # the group's answer distribution over ``options``

    def __post_init__(self) -> None:
        if len(self.options) != len(self.target) or len(self.options) < 2:
            raise OpinionQAError(f"question {self.key}: needs >= 2 options, one probability each")
        if abs(sum(self.target) - 1) > 1e-6 or min(self.target) < 0:
            raise OpinionQAError(f"question {self.key}: target is not a distribution: {self.target}")


@dataclass(frozen=True)
class OpinionGroup:
    name: str
    attribute: str
    questions: tuple[OpinionQuestion, ...]
    source: str

    def __len__(self) -> int:
        return len(self.questions)

    @cached_property
    def sha256(self) -> str:
        """Hash of what was read for the group: results record it to refuse other data under the same name.

        sha256 of ``[attribute, name, [[key, question, options, target], ...]]`` as compact UTF-8 JSON.
        """
        data = [
            self.attribute,
            self.name,
            [[q.key, q.question, list(q.options), list(q.target)] for q in self.questions],
        ]
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_opinion_dir() -> Path | None:
    return shared_dataset_dir(DATA_DIR_ENV, "opinionqa")


def _data_dir(data_dir: str | Path | None) -> Path:
    directory = Path(data_dir) if data_dir is not None else default_opinion_dir()
    if directory is None or not directory.is_dir():
        raise OpinionQAError(
            f"no OpinionQA directory ({directory}): pass data_dir, set ${DATA_DIR_ENV}, "
            "or place shared/datasets/opinionqa beside the checkout"
        )
    if not _waves(directory):
        raise OpinionQAError(f"{directory} holds no wave folders with an info.csv")
    return directory


def _waves(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if (p / "info.csv").is_file())


def _read_counts(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise OpinionQAError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise OpinionQAError(f"{path} must map question keys to group answer counts")
    return data


def list_groups(data_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Every attribute's groups, e.g. ``{"CREGION": ["Midwest", "Northeast", ...], ...}``."""
    groups: dict[str, set[str]] = {a: set() for a in ATTRIBUTES}
    for wave in _waves(_data_dir(data_dir)):
        for attribute in ATTRIBUTES:
            path = wave / f"{attribute}_data.json"
            if path.is_file():
                for entry in _read_counts(path).values():
                    groups[attribute].update(k for k in entry if k not in ("MC_options", "question_text"))
    return {a: sorted(g) for a, g in groups.items() if g}


def resolve_group(group: str, data_dir: str | Path | None = None) -> tuple[str, str]:
    """(attribute, group) for ``"Northeast"`` or ``"CREGION:Northeast"``; names an ambiguous or unknown group."""
    known = list_groups(data_dir)
    prefix, colon, rest = group.partition(":")
    attribute, name = (prefix, rest) if colon and prefix in ATTRIBUTES else ("", group)
    matches = [a for a, names in known.items() if name in names and attribute in ("", a)]
    if not matches:
        raise OpinionQAError(f"unknown OpinionQA group {group!r}; groups: {known}")
    if len(matches) > 1:
        raise OpinionQAError(f"group {name!r} is in {matches}; name one, e.g. {matches[0]}:{name}")
    return matches[0], name


def load_group(group: str, data_dir: str | Path | None = None) -> OpinionGroup:
    """Every question the group answered, with its answer distribution (all waves)."""
    directory = _data_dir(data_dir)
    attribute, name = resolve_group(group, directory)
    questions = []
    for wave in _waves(directory):
        path = wave / f"{attribute}_data.json"
        if path.is_file():
            questions += _wave_questions(wave, path, name)
    if not questions:
        raise OpinionQAError(f"group {name!r} ({attribute}) answered no question in {directory}")
    return OpinionGroup(name, attribute, tuple(questions), str(directory))


def _wave_questions(wave: Path, counts_path: Path, group: str) -> list[OpinionQuestion]:
    info = _read_info(wave / "info.csv")
    out = []
    for key, entry in _read_counts(counts_path).items():
        if key not in info:
            raise OpinionQAError(f"{counts_path}: question {key!r} is not in {wave / 'info.csv'}")
        question, options = info[key]
        counts = entry.get(group) if isinstance(entry, dict) else None
        if counts is None:
            continue
        by_option = _match_options(counts, options, f"{counts_path}: {key}")
        kept = [o for o in options if o not in DROPPED_OPTIONS]
        values = [by_option.get(o, 0.0) for o in kept]
        if sum(values) > 0:
            out.append(OpinionQuestion(key, question, tuple(kept), tuple(v / sum(values) for v in values)))
    return out


def _match_options(counts: dict, options: list[str], where: str) -> dict[str, float]:
    """Counts keyed by info.csv's option text (matched case-insensitively: the counts' text has case slips)."""
    canonical = {o.casefold(): o for o in options}
    out: dict[str, float] = {}
    for option, count in counts.items():
        if option.casefold() not in canonical:
            raise OpinionQAError(f"{where}: counts name option {option!r}, which info.csv does not list")
        out[canonical[option.casefold()]] = out.get(canonical[option.casefold()], 0.0) + float(count)
    return out


def _read_info(path: Path) -> dict[str, tuple[str, list[str]]]:
    frame = pd.read_csv(path)
    missing = {"key", "question", "references"} - set(frame.columns)
    if missing:
        raise OpinionQAError(f"{path} lacks the columns {sorted(missing)}")
    info = {}
    for key, question, references in zip(frame["key"], frame["question"], frame["references"]):
        try:
            options = ast.literal_eval(references)
        except (ValueError, SyntaxError):
            raise OpinionQAError(f"{path}: {key}: references {references!r} is not a list literal") from None
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise OpinionQAError(f"{path}: {key}: references must be a list of option strings")
        info[key] = (str(question), options)
    return info


def split_questions(
    group: OpinionGroup, n_train: int = 10, seed: int = 0, max_test: int | None = None
) -> tuple[list[OpinionQuestion], list[OpinionQuestion]]:
    """A seeded split: ``n_train`` training questions and the rest (at most ``max_test``) held out."""
    if n_train < 1:
        raise ConfigError(f"n_train must be >= 1, got {n_train}")
    if len(group) <= n_train:
        raise OpinionQAError(
            f"group {group.name!r} has {len(group)} questions: too few for n_train={n_train} plus a test set"
        )
    order = list(group.questions)
    random.Random(seed).shuffle(order)
    test = order[n_train:]
    return order[:n_train], test if max_test is None else test[:max_test]
