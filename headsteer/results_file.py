"""Resumable results: a tidy CSV merged by atomic replace, and a settings sidecar that guards it.

A long job (a sweep, a table) writes each finished batch of rows with
:func:`write_rows`; killed at any point, the CSV holds every row written so
far. Restarted, :func:`load_rows` returns them (so the job skips their
cells) after checking ``<out>.settings.json`` matches the job's settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from headsteer.files import settings_path, write_csv_atomic, write_json_atomic


def load_rows(out: Path, settings: dict, columns: Sequence[str], text: bool = False) -> pd.DataFrame:
    """Earlier rows of this job; refuses a file made with other settings (and names what differs).

    ``text``: keep empty cells and words like "NA" or "null" as strings (for predictions), not NaN.
    """
    path = settings_path(out)
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier != settings:
            changed = sorted(k for k in set(settings) | set(earlier) if earlier.get(k) != settings.get(k))
            raise ValueError(f"{out} holds results made with other settings ({', '.join(changed)}); use another --out")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, settings)
    if not out.is_file():
        return pd.DataFrame(columns=list(columns))
    return pd.read_csv(out, keep_default_na=not text)


def write_rows(out: Path, frame: pd.DataFrame) -> None:
    """Replace ``out`` with ``frame`` atomically (a reader sees the old file or the new one)."""
    write_csv_atomic(out, frame)
