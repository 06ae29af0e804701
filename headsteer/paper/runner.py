"""Resumable method runs: one results row per (task, method, seed), every held-out prediction kept.

The comparison tables (:mod:`headsteer.paper.table`), the composition table
(:mod:`headsteer.paper.composition`) and the opinion table
(:mod:`headsteer.paper.opinion`) are all "for each (task, seed) build a cell
(:class:`headsteer.paper.experiment.Cell`), run each method on it, score the
held-out items". This module runs that loop: after each method its row and its
predictions are merged into the results CSV and its predictions file
(:class:`headsteer.paper.results.ResultsFile`: under a lock, predictions
first, so a row on disk always has its predictions); a killed run resumes
where it stopped, several runs may write one file at once, and the settings
sidecar refuses a file made with other settings or data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from headsteer.paper.experiment import CellT, Method
from headsteer.paper.results import ResultsFile, Settings
from headsteer.paper.workers import ModelOrWorkers, as_workers

KEY = ["task", "method", "seed"]
METRICS = ("first_token", "exact_match")  # what evaluate_pairs scores per held-out pair
ITEM_COLUMNS = ("input", "target", "prediction")  # what identifies and shows a held-out prediction
# Builds the (task, seed) cell on the model it runs on (this process's, or a Ray worker's).
MakeCell = Callable[[object, str, int], CellT]


@dataclass(frozen=True)
class _CellMethods:
    """One unit of a table: the methods of one (task, seed) cell still to do, run on one cell."""

    task: str
    seed: int
    methods: tuple[str, ...]


def run_methods(
    model: ModelOrWorkers,
    cells: Sequence[tuple[str, int]],
    make_cell: MakeCell[CellT],
    methods: Mapping[str, Method[CellT]],
    settings: Settings,
    out: str | Path | None = None,
    progress: bool = True,
    desc: str = "table",
    metrics: Sequence[str] = METRICS,
    item_columns: Sequence[str] = ITEM_COLUMNS,
) -> pd.DataFrame:
    """Every method on every (task, seed) cell; with ``out``, resumable (finished rows are skipped).

    A method returns one row per held-out item with ``item_columns`` and
    ``metrics``; the results row holds each metric's mean over the items.
    ``make_cell(model, task, seed)`` builds a cell once for all of its
    methods; with :class:`~headsteer.paper.workers.RayWorkers` each cell's
    methods run on one actor and the rows are merged here as cells finish.
    """
    columns = [*KEY, "n_train", "n_test", *metrics]
    kept = [*KEY, *item_columns, *metrics]
    store = (
        ResultsFile(Path(out), tuple(columns), tuple(KEY), settings, prediction_columns=tuple(kept)) if out else None
    )
    done = store.open() if store else pd.DataFrame(columns=columns)
    finished = set(zip(done["task"], done["method"], done["seed"].astype(int)))
    units = [_CellMethods(t, s, tuple(m for m in methods if (t, m, s) not in finished)) for t, s in cells]
    units = [unit for unit in units if unit.methods]
    bar = tqdm(total=sum(len(unit.methods) for unit in units), desc=desc, disable=not progress)

    def add(result: tuple[pd.DataFrame, pd.DataFrame]) -> None:
        nonlocal done
        row, scores = result
        done = store.add(row, scores[kept]) if store else pd.concat([done, row], ignore_index=True)
        bar.update(1)

    as_workers(model).run(units, partial(_cell_work, make_cell, methods, columns, tuple(metrics)), add)
    bar.close()
    keys = set(cells)
    wanted = [(t, int(s)) in keys and m in methods for t, s, m in zip(done["task"], done["seed"], done["method"])]
    return done[wanted].reset_index(drop=True)


def _cell_work(
    make_cell: MakeCell[CellT],
    methods: Mapping[str, Method[CellT]],
    columns: Sequence[str],
    metrics: Sequence[str],
    model: object,
    unit: _CellMethods,
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Each method's results row and per-item scores on one cell, built once (here or on a worker)."""
    cell = make_cell(model, unit.task, unit.seed)
    for method in unit.methods:
        scores = methods[method](cell).assign(task=unit.task, method=method, seed=unit.seed)
        row = {
            "task": unit.task,
            "method": method,
            "seed": unit.seed,
            "n_train": len(cell.train),
            "n_test": len(scores),
            **{m: scores[m].mean() for m in metrics},
        }
        yield pd.DataFrame([row], columns=list(columns)), scores
