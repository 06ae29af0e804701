"""Resumable method runs: one results row per (task, method, seed), every held-out prediction kept.

The comparison tables (:mod:`headsteer.paper.table`) and the composition table
(:mod:`headsteer.paper.composition`) are both "for each (task, seed) build a
:class:`Cell`, run each method on it, score the held-out pairs". This module
runs that loop: after each method its row and its predictions are merged
into the results CSV and ``<out>.predictions.csv``
(:class:`headsteer.paper.results.ResultsFile`: under a lock, predictions
first, so a row on disk always has its predictions); a killed run resumes
where it stopped, several runs may write one file at once, and the settings
sidecar refuses a file made with other settings or data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from tqdm.auto import tqdm

from headsteer.config import FitConfig
from headsteer.errors import ConfigError
from headsteer.evaluate import evaluate_pairs, format_mean_std, mean_std
from headsteer.paper.results import ResultsFile, Settings
from headsteer.prompts import Template
from headsteer.steering import Steering
from headsteer.tasks import Pair

KEY = ["task", "method", "seed"]
METRICS = ("first_token", "exact_match")  # what evaluate_pairs scores per held-out pair
ITEM_COLUMNS = ("input", "target", "prediction")  # what identifies and shows a held-out prediction
PREDICTION_COLUMNS = [*KEY, *ITEM_COLUMNS, *METRICS]


class RunCell(Protocol):
    """What :func:`run_methods` needs of a cell: its identity and training-set size."""

    task: str
    seed: int
    train: Sequence[Any]


@dataclass(frozen=True)
class ExperimentConfig:
    """What every method table shares: split sizes, and Δ's layer, step budget and penalty weights."""

    n_train: int = 10
    max_test: int | None = 100
    layer: int = FitConfig().layer
    fit_steps: int = FitConfig().steps
    gamma: float = FitConfig().gamma
    lam: float = FitConfig().lam

    def __post_init__(self) -> None:
        FitConfig(layer=self.layer, steps=self.fit_steps, gamma=self.gamma, lam=self.lam)  # validates them
        if self.n_train < 1:
            raise ConfigError(f"n_train must be >= 1, got {self.n_train}")
        if self.max_test is not None and self.max_test < 1:
            raise ConfigError(f"max_test must be >= 1 or None, got {self.max_test}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(**data)


@dataclass
class Cell:
    """One (task, seed): the model, its splits, the template, the experiment's config, a cache for its methods.

    ``config`` is the experiment's own frozen config; it must have ``layer``
    and ``fit_steps`` (Δ's layer and step budget).
    """

    model: Any
    task: str
    seed: int
    train: list[Pair]
    test: list[Pair]
    template: Template
    config: Any
    cache: dict = field(default_factory=dict)

    def fit_config(self, **changes) -> FitConfig:
        return replace(FitConfig(layer=self.config.layer, steps=self.config.fit_steps, seed=self.seed), **changes)

    def score(self, template: Template | None = None, steering: Steering = ()) -> pd.DataFrame:
        """``evaluate_pairs`` on the held-out pairs (default: the cell's own template)."""
        return evaluate_pairs(self.model, self.test, template or self.template, steering, progress=False)


Method = Callable[[Cell], pd.DataFrame]  # a Cell -> one evaluate_pairs row per held-out pair


def run_methods(
    cells: Sequence[tuple[str, int]],
    make_cell: Callable[[str, int], RunCell],
    methods: Mapping[str, Callable[[Any], pd.DataFrame]],
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
    cell: RunCell | None = None  # the current (task, seed); its cache is shared by its methods only
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


METRIC_TITLES = {
    "exact_match": "Exact match",
    "first_token": "First-token accuracy",
    "gpt_eval": "GPT-Eval (LLM judge)",
    "kl": "KL(group ‖ model) on held-out questions, lower is better",
}


def summary_markdown(
    rows: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str] = ("exact_match", "first_token")
) -> str:
    """Method × task tables of mean ± std over seeds, one per metric (rows: one per task, method, seed).

    Where cells have different numbers of seeds (a table still running), each cell names its count.
    """
    stats = mean_std(rows, by=["task", "method"], metrics=metrics)
    table = format_mean_std(stats, metrics=metrics)
    uneven = stats["seeds"].nunique() > 1
    parts = []
    for metric, title in ((m, METRIC_TITLES.get(m, m)) for m in metrics):
        if uneven:
            table[metric] = [f"{v} ({n})" for v, n in zip(table[metric], stats["seeds"])]
        wide = table.pivot(index="method", columns="task", values=metric)
        wide = wide.reindex([m for m in methods if m in wide.index])
        note = ", (n) = seeds in the cell" if uneven else ""
        parts.append(f"{title} (mean ± std over seeds{note})\n\n" + wide.to_markdown())
    return "\n\n".join(parts) + "\n"
