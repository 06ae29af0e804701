"""The paper's comparison tables: every method on the same seeded splits, resumable, mean ± std.

For each (task, seed) the training pairs (N = ``n_train``) and held-out pairs
come from :func:`headsteer.tasks.split_task`, identical for every method.
Each method turns them into ``evaluate_pairs``-style scores (:mod:`headsteer.paper.runner`); one row per
(task, method, seed) goes into the results CSV as soon as it is done, so a
killed run resumes where it stopped, and every held-out prediction goes into
``<out>.predictions.csv`` (what :mod:`headsteer.paper.judge` reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from headsteer.baselines.function_vectors import FVConfig, fit_function_vector
from headsteer.baselines.icv import fit_icv
from headsteer.baselines.peft import PEFTConfig, evaluate_hf, train_peft
from headsteer.baselines.prompting import few_shot_template
from headsteer.config import FitConfig
from headsteer.errors import ConfigError
from headsteer.fitting.loop import fit
from headsteer.fitting.tuning import DEFAULT_FOLDS, fit_tuned
from headsteer.paper.results import InputHash, Settings, model_settings
from headsteer.paper.runner import Cell, Method, run_methods
from headsteer.prompts import Template
from headsteer.tasks import Task, split_task


@dataclass(frozen=True)
class TableConfig:
    """Shared settings: Δ's layer and fit, the FV's k and layer, the ICV's strength, PEFT steps."""

    n_train: int = 10
    max_test: int | None = 100
    layer: int = 4
    fit_steps: int = FitConfig().steps
    fv_top_k: int = 10
    fv_layer: int | None = None
    icv_strength: float = 0.1
    peft_steps: int = FitConfig().steps  # the same step budget as Δ: LoRA and IA3 reach ~0 training loss in 10 (README)
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(METHODS))

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown methods {unknown} (--methods); known: {list(METHODS)}")
        if self.n_train < 3:
            raise ConfigError(
                f"n_train must be >= 3 (--n-train; function vectors use leave-one-out prompts), got {self.n_train}"
            )
        if "Δ tuned (CV)" in self.methods and self.n_train < DEFAULT_FOLDS:
            raise ConfigError(
                f"n_train must be >= {DEFAULT_FOLDS} for 'Δ tuned (CV)' ({DEFAULT_FOLDS}-fold "
                f"cross-validation on the training pairs; --n-train), got {self.n_train}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "methods": list(self.methods)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableConfig:
        return cls(**{**data, "methods": tuple(data.get("methods", METHODS))})


def _function_vector(cell: Cell):
    if "fv" not in cell.cache:
        config = FVConfig(top_k=cell.config.fv_top_k, layer=cell.config.fv_layer, seed=cell.seed)
        cell.cache["fv"] = fit_function_vector(cell.model, cell.train, cell.template, config, cell.task)[0]
    return cell.cache["fv"]


def _icv(cell: Cell) -> pd.DataFrame:
    return cell.score(steering=[fit_icv(cell.model, cell.train, cell.config.icv_strength, cell.task)])


def _peft(method: str) -> Method:
    def run(cell: Cell) -> pd.DataFrame:
        config = PEFTConfig(method=method, steps=cell.config.peft_steps, seed=cell.seed)
        trained, _ = train_peft(cell.model, cell.train, cell.template, config, cell.task)
        return evaluate_hf(trained, cell.model.tokenizer, cell.test, cell.template)

    return run


def _delta(**changes) -> Method:
    def run(cell: Cell) -> pd.DataFrame:
        result = fit(cell.model, cell.train, cell.template, cell.fit_config(**changes), cell.task, progress=False)
        return cell.score(steering=[result.intervention])

    return run


def _delta_tuned(cell: Cell) -> pd.DataFrame:
    result, _ = fit_tuned(cell.model, cell.train, cell.template, cell.fit_config(), task=cell.task, progress=False)
    return cell.score(steering=[result.intervention])


# The methods whose prompts hold every training pair before the query (the longest prompts scored).
FEW_SHOT_METHODS = ("10-shot", "10-shot + FV")

METHODS: dict[str, Method] = {
    "0-shot": lambda c: c.score(),
    "10-shot": lambda c: c.score(few_shot_template(c.template, c.train)),
    "0-shot + FV": lambda c: c.score(steering=[_function_vector(c)]),
    "10-shot + FV": lambda c: c.score(few_shot_template(c.template, c.train), [_function_vector(c)]),
    "ICV": _icv,
    "LoRA": _peft("lora"),
    "IA3": _peft("ia3"),
    "prompt tuning": _peft("prompt_tuning"),
    "Δ (ours)": _delta(),
    "Δ tuned (CV)": _delta_tuned,
    "Δ unregularized": _delta(gamma=0.0, lam=0.0),
    "Δ Adam": _delta(optimizer="adam", lr=None),
    "Δ FISTA": _delta(optimizer="fista", lr=None),
}


def build_table(
    model,
    tasks: Sequence[Task],
    template: Template,
    seeds: Sequence[int],
    config: TableConfig = TableConfig(),
    out: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (task, method, seed); with ``out``, resumable (finished rows are skipped).

    ``config.methods`` only selects what to run: one file may gather methods (and tasks) over several runs.
    """
    settings = table_settings(model, tasks, template, config)
    by_name = {t.name: t for t in tasks}

    def make_cell(name: str, seed: int) -> Cell:
        train, test = split_task(by_name[name], n_train=config.n_train, seed=seed, max_test=config.max_test)
        return Cell(model, name, seed, list(train), list(test), template, config)

    methods = {m: METHODS[m] for m in config.methods}
    cells = [(t.name, s) for t in tasks for s in seeds]
    return run_methods(cells, make_cell, methods, settings, out, progress)


def table_settings(model, tasks: Sequence[Task], template: Template, config: TableConfig) -> Settings:
    """What the table's rows depend on; ``methods`` is left out (it selects rows, it does not change them)."""
    values = {
        "template": template.to_dict(),
        "config": {**config.to_dict(), "methods": None},
        "model": model_settings(model),
    }
    return Settings(values, {t.name: InputHash.of_task(t) for t in tasks})
