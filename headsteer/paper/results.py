"""Resumable results: rows merged under a lock, and a settings sidecar that records every input by content.

A long job (a layer sweep, a method table, the judge's votes) writes each
finished batch of rows as it goes; killed at any point, the file holds every
row written so far and a restart skips them. Any number of writers may share
one file (two processes on one ``--out``; later, a driver gathering workers'
rows is just another writer):

* **Adding rows** (:meth:`ResultsFile.add`) takes the file's lock
  (:func:`headsteer.files.locked`), re-reads what is on disk, merges the new
  rows by the job's key columns (a key already on disk keeps its row; a new
  row with that key is dropped, so nothing is duplicated or overwritten) and
  replaces the file atomically. No writer ever writes back its own in-memory
  copy, so none loses another's rows. A table that keeps every held-out
  prediction writes them first (``<stem>.predictions.csv``), then the rows, so
  a row on disk always has its predictions; predictions that a killed writer
  left without a row are replaced when their row is next written.
* **Reading** (:meth:`ResultsFile.rows`) returns only complete rows: a record
  with too few or too many fields, a broken quote, or a last line cut off
  before its newline is reported (:class:`MalformedRowWarning`, naming the file
  and line), does not count as done, and is dropped by the next merge, so its
  cell is computed again.
* **Settings** (``OUT.settings.json``, :class:`Settings`) hold what the rows
  depend on as content. ``settings`` (template, config, model name and
  fingerprint, prompts...) must be equal; ``inputs`` (each task's or group's
  data, by sha256) must agree on every name a run shares with the file, while
  a run may use a subset of them or add new ones (a table run on fewer or
  other tasks). The sidecar is created or compared under the lock, so two
  writers starting at once agree. A results file without a sidecar, or with
  one of the older name-only format, is refused, never adopted.

Rows are merged as the text their writer put in the CSV (``pandas.to_csv``
formatting, parsed back with :mod:`csv`), never parsed into numbers and
reformatted, so keys compare exactly and earlier values keep their bytes.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import pandas as pd

from headsteer.errors import ResultsFileError
from headsteer.files import locked, predictions_path, settings_path, write_json_atomic, write_text_atomic
from headsteer.models import model_fingerprint
from headsteer.tasks import Task

FORMAT = 2  # version of the sidecar layout; 1 (no "format" field) recorded names, not content
# A JSON value (read-only views, so a dict[str, str] is one: Mapping and Sequence are covariant).
JSON = Union[None, bool, int, float, str, Sequence["JSON"], Mapping[str, "JSON"]]
Record = tuple[str, ...]  # one CSV row, each field as written


class MalformedRowWarning(UserWarning):
    """A results file holds a record that is not a complete row: it is not done and will be recomputed."""


# ---- settings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputHash:
    """One input the rows were made from, by content: what it is, its sha256, and where it was read."""

    kind: str  # in words, for messages: "task data", "OpinionQA group"
    sha256: str
    source: str  # informational: the same content read from elsewhere is the same input

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"{self.kind}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    @classmethod
    def of_task(cls, task: Task) -> InputHash:
        return cls("task data", task.sha256, task.source)

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "sha256": self.sha256, "source": self.source}


def model_settings(model) -> dict[str, str]:
    """The model as results record it: its name and a fingerprint of its weights (another checkpoint differs)."""
    return {"name": str(model.cfg.model_name), "fingerprint": model_fingerprint(model)}


@dataclass(frozen=True)
class Settings:
    """What a results file's rows depend on.

    ``values``: JSON values that must be equal for rows to mix (template,
    config, model, prompts). ``inputs``: data inputs by name; a run agrees with
    a file when every name both have maps to the same sha256.
    """

    values: Mapping[str, JSON]
    inputs: Mapping[str, InputHash] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Through JSON once, so tuples become lists and a fresh run compares equal to what a file holds.
        object.__setattr__(self, "values", json.loads(json.dumps(dict(self.values), ensure_ascii=False)))
        object.__setattr__(self, "inputs", dict(sorted(self.inputs.items())))

    def to_json(self) -> dict[str, JSON]:
        return {
            "format": FORMAT,
            "settings": dict(self.values),
            "inputs": {name: record.to_dict() for name, record in self.inputs.items()},
        }

    @classmethod
    def read(cls, path: Path) -> Settings:
        """The settings recorded in sidecar ``path``; refuses a malformed or old-format file by name."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ResultsFileError(f"{path} is not valid JSON ({err}); use another --out") from None
        if not isinstance(data, dict) or "format" not in data:
            raise ResultsFileError(
                f"{path} records settings in an older format (names, not content hashes), so its rows cannot be "
                f"checked against this run; use another --out (or rerun into a new file)"
            )
        if data["format"] != FORMAT:
            raise ResultsFileError(f"{path} has settings format {data['format']!r}; this headsteer reads {FORMAT}")
        try:
            inputs = {name: InputHash(**record) for name, record in data["inputs"].items()}
            return cls(data["settings"], inputs)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ResultsFileError(f"{path} is not a headsteer settings file ({err}); use another --out") from None

    def with_inputs(self, more: Mapping[str, InputHash]) -> Settings:
        """These settings plus the inputs of ``more`` they do not name yet."""
        return Settings(self.values, {**more, **self.inputs})

    def differences(self, recorded: Settings) -> list[tuple[str, str]]:
        """(what, how) for every value and shared input where this run differs from ``recorded``."""
        found = []
        for name in sorted(set(self.values) | set(recorded.values)):
            mine, theirs = self.values.get(name, _ABSENT), recorded.values.get(name, _ABSENT)
            if mine != theirs:
                found.append((name, f"{name} differs ({_change(mine, theirs)})"))
        for name in sorted(set(self.inputs) & set(recorded.inputs)):
            mine_in, theirs_in = self.inputs[name], recorded.inputs[name]
            if mine_in.sha256 != theirs_in.sha256:
                what = f"{mine_in.kind} for {name!r}"
                found.append(
                    (
                        what,
                        f"{what} differs (read from {mine_in.source}, sha256 {mine_in.sha256[:12]}… here; "
                        f"{theirs_in.sha256[:12]}… in the file, read from {theirs_in.source})",
                    )
                )
        return found


_ABSENT = object()


def _short(value: object) -> str:
    if value is _ABSENT:
        return "absent"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:16] + "…"


def _change(mine: object, theirs: object) -> str:
    """``mine`` vs ``theirs`` in words; for two dicts, only the fields that differ."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        keys = sorted(set(mine) | set(theirs), key=str)
        return "; ".join(
            f"{k}: {_short(mine.get(k, _ABSENT))} here, {_short(theirs.get(k, _ABSENT))} in the file"
            for k in keys
            if mine.get(k, _ABSENT) != theirs.get(k, _ABSENT)
        )
    return f"{_short(mine)} here, {_short(theirs)} in the file"


# ---- the results file ------------------------------------------------------------------------
@dataclass(frozen=True)
class ResultsFile:
    """A resumable results CSV ``path`` with one row per ``key``, guarded by ``settings``.

    ``text``: key columns are read back as exact strings and empty cells or
    words like "NA" stay strings (for rows keyed by free text). With
    ``prediction_columns``, each row's per-item predictions go to
    ``<stem>.predictions.csv`` (its first columns are ``key``).
    """

    path: Path
    columns: tuple[str, ...]
    key: tuple[str, ...]
    settings: Settings
    text: bool = False
    prediction_columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if len(set(self.columns)) != len(self.columns) or not set(self.key) <= set(self.columns) or not self.key:
            raise ValueError(
                f"{self.path}: key {self.key} must be a non-empty subset of distinct columns {self.columns}"
            )
        if self.prediction_columns is not None and tuple(self.prediction_columns[: len(self.key)]) != self.key:
            raise ValueError(
                f"{self.path}: prediction columns {self.prediction_columns} must start with the key {self.key}"
            )

    @property
    def predictions(self) -> Path | None:
        return predictions_path(self.path) if self.prediction_columns is not None else None

    def open(self) -> pd.DataFrame:
        """Create or check the settings sidecar (under the lock), then return the complete rows on disk.

        Taking the locks also removes temporary files a killed writer left.
        """
        with locked(self.path):
            self._agree_settings()
            if self.predictions is not None:
                with locked(self.predictions):
                    pass
        return self.rows()

    def rows(self) -> pd.DataFrame:
        """The complete rows on disk (malformed records are warned about and left out)."""
        return self._frame(_unique(_read_records(self.path, self.columns), self._key_of, self.path))

    def add(self, rows: pd.DataFrame, predictions: pd.DataFrame | None = None) -> pd.DataFrame:
        """Merge ``rows`` (and their ``predictions``) into the files on disk; returns every complete row now there.

        A key already on disk keeps its row (and predictions); the new one is
        dropped. Predictions are written first, then the rows.
        """
        if (predictions is None) != (self.prediction_columns is None):
            raise ValueError(f"{self.path}: predictions must be given exactly when the file keeps them")
        with locked(self.path):
            self._agree_settings()
            on_disk = _unique(_read_records(self.path, self.columns), self._key_of, self.path)
            done = {self._key_of(r) for r in on_disk}
            new = [r for r in _unique(_records(rows, self.columns), self._key_of, None) if self._key_of(r) not in done]
            if not new:
                return self._frame(on_disk)
            if predictions is not None and self.prediction_columns is not None:
                self._add_predictions(predictions, self.prediction_columns, done, {self._key_of(r) for r in new})
            merged = on_disk + new
            write_text_atomic(self.path, _csv_text(self.columns, merged))
        return self._frame(merged)

    def _add_predictions(
        self, predictions: pd.DataFrame, columns: tuple[str, ...], done: set[Record], new: set[Record]
    ) -> None:
        """Keep the predictions of finished rows, drop a killed writer's orphans, add those of the new rows."""
        path, n = predictions_path(self.path), len(self.key)
        with locked(path):  # nested inside the results lock, always in this order
            kept = [r for r in _read_records(path, columns) if r[:n] in done]
            fresh = [r for r in _records(predictions, columns) if r[:n] in new]
            write_text_atomic(path, _csv_text(columns, kept + fresh))

    def _agree_settings(self) -> None:
        """Under the lock: write the sidecar for a new file, or check this run against it (recording new inputs)."""
        path = settings_path(self.path)
        if not path.is_file():
            orphans = [p for p in (self.path, self.predictions) if p is not None and p.exists()]
            if orphans:
                raise ResultsFileError(
                    f"{orphans[0]} exists without its settings file {path.name}, so what its rows were made with is "
                    f"unknown; refusing to add to it or relabel it: use another --out"
                )
            write_json_atomic(path, self.settings.to_json())
            return
        recorded = Settings.read(path)
        differences = self.settings.differences(recorded)
        if differences:
            raise ResultsFileError(
                f"{self.path} holds results made with other settings ({', '.join(w for w, _ in differences)}): "
                f"{'; '.join(h for _, h in differences)}. Use another --out"
            )
        merged = recorded.with_inputs(self.settings.inputs)
        if merged != recorded:
            write_json_atomic(path, merged.to_json())

    def _key_of(self, record: Record) -> Record:
        return tuple(record[self.columns.index(k)] for k in self.key)

    def _frame(self, records: Sequence[Record]) -> pd.DataFrame:
        dtypes = dict.fromkeys(self.key, str) if self.text else None
        return pd.read_csv(io.StringIO(_csv_text(self.columns, records)), keep_default_na=not self.text, dtype=dtypes)


# ---- CSV records -----------------------------------------------------------------------------
def _csv_text(columns: Sequence[str], records: Iterable[Record]) -> str:
    """A header and ``records``, quoted as ``pandas.to_csv`` does (both use :mod:`csv`'s minimal quoting)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(records)
    return buffer.getvalue()


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[Record]:
    """``frame``'s rows as ``pandas.to_csv`` writes them."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"rows lack the columns {missing}")
    reader = csv.reader(io.StringIO(frame[list(columns)].to_csv(index=False, lineterminator="\n"), newline=""))
    next(reader)
    return [tuple(fields) for fields in reader]


def _read_records(path: Path, columns: Sequence[str]) -> list[Record]:
    """The complete records of ``path``; warns (naming the line) for each record that is not one."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]  # tail: a last line its writer never finished (maybe mid-character)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ResultsFileError(f"{path} is not UTF-8 text ({err}); use another --out") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = next(reader, None)
    if header is None:
        return []
    if tuple(header) != tuple(columns):
        raise ResultsFileError(f"{path} has the columns {header}, not the expected {list(columns)}; use another --out")
    records, broken = [], []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:  # a quote never closed
            broken.append(start)
            continue
        if len(fields) == len(columns):
            records.append(tuple(fields))
        elif fields:  # a blank line is no record
            broken.append(start)
    if tail:
        broken.append(reader.line_num + 1)
    for line in broken:
        warnings.warn(
            f"{path}: line {line} is not a complete row of {len(columns)} fields; it is not counted "
            f"as done and is dropped when the next row is written",
            MalformedRowWarning,
            stacklevel=4,
        )
    return records


def _unique(records: Sequence[Record], key_of, path: Path | None) -> list[Record]:
    """``records`` without repeated keys (the first is kept; a repeat on disk is warned about)."""
    seen: set[Record] = set()
    kept = []
    for record in records:
        key = key_of(record)
        if key in seen:
            if path is not None:
                warnings.warn(
                    f"{path}: a second row for key {key} is ignored; the first is kept",
                    MalformedRowWarning,
                    stacklevel=4,
                )
            continue
        seen.add(key)
        kept.append(record)
    return kept
