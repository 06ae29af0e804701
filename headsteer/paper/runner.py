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

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from headsteer.paper.experiment import CellT, Method
from headsteer.paper.results import ResultsFile, Settings

KEY = ["task", "method", "seed"]
METRICS = ("first_token", "exact_match")  # what evaluate_pairs scores per held-out pair
ITEM_COLUMNS = ("input", "target", "prediction")  # what identifies and shows a held-out prediction


def run_methods(
    cells: Sequence[tuple[str, int]],
    make_cell: Callable[[str, int], CellT],
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
    """
    columns = [*KEY, "n_train", "n_test", *metrics]
    kept = [*KEY, *item_columns, *metrics]
    store = (
        ResultsFile(Path(out), tuple(columns), tuple(KEY), settings, prediction_columns=tuple(kept)) if out else None
    )
    done = store.open() if store else pd.DataFrame(columns=columns)
    finished = set(zip(done["task"], done["method"], done["seed"].astype(int)))
    todo = [(t, s, m) for t, s in cells for m in methods if (t, m, s) not in finished]
    cell: CellT | None = None  # the current (task, seed), built once for all of its methods
    for task, seed, method in tqdm(todo, desc=desc, disable=not progress):
        if cell is None or (cell.task, cell.seed) != (task, seed):
            cell = make_cell(task, seed)
        scores = methods[method](cell).assign(task=task, method=method, seed=seed)
        row = pd.DataFrame(
            [
                {
                    "task": task,
                    "method": method,
                    "seed": seed,
                    "n_train": len(cell.train),
                    "n_test": len(scores),
                    **{m: scores[m].mean() for m in metrics},
                }
            ],
            columns=columns,
        )
        done = store.add(row, scores[kept]) if store else pd.concat([done, row], ignore_index=True)
    keys = set(cells)
    wanted = [(t, int(s)) in keys and m in methods for t, s, m in zip(done["task"], done["seed"], done["method"])]
    return done[wanted].reset_index(drop=True)
