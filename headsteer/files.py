"""One place for what headsteer writes where: file-name rules, output checks, atomic writes, a lock.

Files beside a results file ``OUT`` (e.g. ``results/table.csv``):

    OUT.settings.json       what the rows were made with (hashes of every input)
    <OUT stem>.predictions.csv   every held-out prediction (tables that keep them)
    <OUT stem>.md           the Markdown summary
    OUT.lock                taken while a writer merges its rows

Files of a saved intervention ``STEM`` (e.g. ``runs/antonym``):

    STEM.safetensors  Δ          STEM.json  where and on what it was trained
    STEM.metrics.json            STEM.history.csv   (written by ``headsteer fit``)

Every write goes to a temporary file in the target's folder (created with
mode 0666 less the umask, like any other file), is flushed to disk, and is
then renamed over the target: a reader sees the old file or the new one,
never a part. A killed writer leaves at most a ``.NAME.*.tmp`` file, which
the next writer holding the lock removes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from headsteer.errors import OutputPathError

try:  # POSIX; elsewhere writers are not serialised (one writer per results file)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


CACHE_ENV = "HEADSTEER_CACHE_DIR"


# ---- file-name rules ------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Where headsteer keeps what it builds once per machine: the converted default model, the compiled NLL kernel."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "headsteer")


def sibling(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` appended to its whole name (``a/b.csv`` -> ``a/b.csv.lock``)."""
    return path.with_name(path.name + suffix)


def settings_path(out: Path) -> Path:
    return sibling(out, ".settings.json")


def predictions_path(out: Path) -> Path:
    return out.with_name(out.stem + ".predictions.csv")


def summary_path(out: Path) -> Path:
    return out.with_suffix(".md")


def lock_path(out: Path) -> Path:
    return sibling(out, ".lock")


@dataclass(frozen=True)
class ArtifactPaths:
    """The files of a saved intervention with path stem ``stem``."""

    stem: Path

    @classmethod
    def of(cls, path: str | Path) -> ArtifactPaths:
        """``runs/x``, ``runs/x.safetensors`` and ``runs/x.json`` all name the artifact ``runs/x``."""
        base = Path(path)
        if base.suffix in (".safetensors", ".json"):
            base = base.with_suffix("")
        return cls(base)

    @property
    def tensors(self) -> Path:
        return sibling(self.stem, ".safetensors")

    @property
    def meta(self) -> Path:
        return sibling(self.stem, ".json")

    @property
    def metrics(self) -> Path:
        return sibling(self.stem, ".metrics.json")

    @property
    def history(self) -> Path:
        return sibling(self.stem, ".history.csv")

    @property
    def all(self) -> tuple[Path, Path, Path, Path]:
        """Every file the artifact may have: tensors, meta, metrics, history."""
        return self.tensors, self.meta, self.metrics, self.history


# ---- checks before any work -------------------------------------------------------------
def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output file that cannot be written, before any work; creates nothing.

    The file may exist (it is replaced) but must not be a directory; its
    nearest existing ancestor must be a writable directory.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a directory, expected a file path")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"{flag} {path}: {ancestor} is a file, so {path.parent} cannot be created")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: no permission to write in {ancestor}")
    if path.exists() and not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
        raise OutputPathError(f"{flag} {path}: exists and cannot be replaced (no permission)")
    return path


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output folder that cannot be created or written, before any work; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a file, expected a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"{flag} {path}: {ancestor} is a file, so {path} cannot be created")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: no permission to write in {ancestor}")
    return path


# ---- atomic writes ----------------------------------------------------------------------
def _temp_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _write_temp(target: Path, data: bytes) -> Path:
    """``data`` in a new temporary file beside ``target``, on disk; returns its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_for(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any file
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    """Replace ``target`` with ``data`` atomically."""
    return write_files_atomic([(Path(target), data)])[0]


def write_text_atomic(target: str | Path, text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))


def json_bytes(data: Any) -> bytes:
    """``data`` as the JSON headsteer writes: indented, UTF-8, one final newline."""
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(target: str | Path, data: Any) -> Path:
    return write_bytes_atomic(target, json_bytes(data))


def write_csv_atomic(target: str | Path, frame: pd.DataFrame) -> Path:
    return write_text_atomic(target, frame.to_csv(index=False))


def write_files_atomic(files: Sequence[tuple[Path, bytes]]) -> list[Path]:
    """Write several files as one unit: every temporary file first, then the renames in order.

    A target that is a directory is refused before anything is written. A
    failure before the renames leaves every target as it was; a failure
    during them puts back the targets already renamed over (from links to
    their old contents taken just before), so the unit ends all old or all
    new. A reader between two renames can still see a mix, so put the file
    that makes the unit valid (e.g. a JSON record with the others' hashes)
    last: a reader that checks it never accepts a mix of old and new files.
    """
    targets = [Path(target) for target, _ in files]
    for target in targets:
        if target.is_dir():
            raise OutputPathError(f"{target}: is a directory, expected a file path")
    temps: list[Path] = []
    backups: dict[Path, Path] = {}
    renamed: list[Path] = []
    try:
        for target, (_, data) in zip(targets, files):
            temps.append(_write_temp(target, data))
        for target in targets:
            if target.exists():
                backups[target] = _backup(target)
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
            renamed.append(target)
    except BaseException:
        _restore(renamed, backups)
        raise
    finally:
        for leftover in [*temps, *backups.values()]:
            leftover.unlink(missing_ok=True)
    return targets


def _backup(target: Path) -> Path:
    """A second name for ``target``'s current contents (a hard link; a copy where links are not supported)."""
    backup = _temp_for(target)
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup


def _restore(renamed: Sequence[Path], backups: dict[Path, Path]) -> None:
    """Undo the renames of a failed unit, newest first: old contents back, new files removed (best effort)."""
    for target in reversed(renamed):
        with suppress(OSError):  # the original error is the one to report
            if target in backups:
                os.replace(backups[target], target)
            else:
                target.unlink()


# ---- one writer at a time ----------------------------------------------------------------
@contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (through ``target.lock``) for the body of the ``with``.

    Writers that read, merge and replace a shared file do it under this lock,
    so none loses another's rows. Temporary files left by a killed writer of
    ``target`` are removed once the lock is held.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(target), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
