"""The paper's comparison tables: every method on the same seeded splits, resumable, mean ± std.

For each (task, seed) the training pairs (N = ``n_train``) and held-out pairs
come from :func:`headsteer.tasks.split_task`, identical for every method.
Each method turns them into ``evaluate_pairs``-style scores; one row per
(task, method, seed) goes into the results CSV as soon as it is done, so a
killed run resumes where it stopped, and every held-out prediction goes into
``<out>.predictions.csv`` (what :mod:`headsteer.judge` reads).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from headsteer.baselines.function_vectors import FVConfig, fit_function_vector
from headsteer.baselines.icv import fit_icv
from headsteer.baselines.peft_baselines import PEFTConfig, evaluate_hf, train_peft
from headsteer.baselines.prompting import few_shot_template
from headsteer.config import FitConfig
from headsteer.evaluate import evaluate_pairs, format_mean_std, mean_std
from headsteer.fit import fit
from headsteer.prompts import Template
from headsteer.results_file import load_rows, write_rows
from headsteer.tasks import Pair, Task, split_task
from headsteer.tuning import fit_tuned

COLUMNS = ["task", "method", "seed", "n_train", "n_test", "first_token", "exact_match"]
KEY = ["task", "method", "seed"]
PREDICTION_COLUMNS = KEY + ["input", "target", "prediction", "first_token", "exact_match"]


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
            raise ValueError(f"unknown methods {unknown}; known: {list(METHODS)}")
        if self.n_train < 3:
            raise ValueError(f"n_train must be >= 3 (function vectors use leave-one-out prompts), got {self.n_train}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "methods": list(self.methods)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableConfig:
        return cls(**{**data, "methods": tuple(data.get("methods", METHODS))})


@dataclass
class Cell:
    """One (task, seed): the model, its splits, the template, and a cache shared by its methods."""

    model: Any
    task: str
    seed: int
    train: list[Pair]
    test: list[Pair]
    template: Template
    config: TableConfig
    cache: dict = field(default_factory=dict)

    def fit_config(self, **changes) -> FitConfig:
        return replace(FitConfig(layer=self.config.layer, steps=self.config.fit_steps, seed=self.seed), **changes)


def _score(cell: Cell, template: Template, steering=()) -> pd.DataFrame:
    return evaluate_pairs(cell.model, cell.test, template, steering, progress=False)


def _function_vector(cell: Cell):
    if "fv" not in cell.cache:
        config = FVConfig(top_k=cell.config.fv_top_k, layer=cell.config.fv_layer, seed=cell.seed)
        cell.cache["fv"] = fit_function_vector(cell.model, cell.train, cell.template, config, cell.task)[0]
    return cell.cache["fv"]


def _icv(cell: Cell) -> pd.DataFrame:
    icv = fit_icv(cell.model, cell.train, cell.config.icv_strength, cell.task)
    with icv.applied(cell.model):
        return _score(cell, cell.template)


def _peft(method: str) -> Callable[[Cell], pd.DataFrame]:
    def run(cell: Cell) -> pd.DataFrame:
        config = PEFTConfig(method=method, steps=cell.config.peft_steps, seed=cell.seed)
        trained, _ = train_peft(cell.model, cell.train, cell.template, config, cell.task)
        return evaluate_hf(trained, cell.model.tokenizer, cell.test, cell.template)
    return run


def _delta(**changes) -> Callable[[Cell], pd.DataFrame]:
    def run(cell: Cell) -> pd.DataFrame:
        result = fit(cell.model, cell.train, cell.template, cell.fit_config(**changes), cell.task, progress=False)
        return _score(cell, cell.template, [result.intervention])
    return run


def _delta_tuned(cell: Cell) -> pd.DataFrame:
    result, _ = fit_tuned(cell.model, cell.train, cell.template, cell.fit_config(), task=cell.task, progress=False)
    return _score(cell, cell.template, [result.intervention])


METHODS: dict[str, Callable[[Cell], pd.DataFrame]] = {
    "0-shot": lambda c: _score(c, c.template),
    "10-shot": lambda c: _score(c, few_shot_template(c.template, c.train)),
    "0-shot + FV": lambda c: _score(c, c.template, [_function_vector(c)]),
    "10-shot + FV": lambda c: _score(c, few_shot_template(c.template, c.train), [_function_vector(c)]),
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
    model, tasks: Sequence[Task], template: Template, seeds: Sequence[int], config: TableConfig = TableConfig(),
    out: str | Path | None = None, progress: bool = True,
) -> pd.DataFrame:
    """One row per (task, method, seed); with ``out``, resumable (finished cells are skipped).

    ``config.methods`` only selects what to run: one file may gather methods over several runs.
    """
    settings = {"template": template.to_dict(), "config": {**config.to_dict(), "methods": None},
                "model": str(model.cfg.model_name)}
    done = load_rows(Path(out), settings, COLUMNS) if out else pd.DataFrame(columns=COLUMNS)
    predictions = _earlier_predictions(Path(out), done) if out else pd.DataFrame(columns=PREDICTION_COLUMNS)
    finished = set(zip(done["task"], done["method"], done["seed"].astype(int)))
    todo = [(t, s, m) for t in tasks for s in seeds for m in config.methods if (t.name, m, s) not in finished]
    cell: Cell | None = None  # the current (task, seed); its cache is shared by its methods only
    for task, seed, method in tqdm(todo, desc="table", disable=not progress):
        if cell is None or (cell.task, cell.seed) != (task.name, seed):
            cell = _cell(model, task, seed, template, config)
        scores = METHODS[method](cell).assign(task=task.name, method=method, seed=seed)
        row = {"task": task.name, "method": method, "seed": seed, "n_train": len(cell.train), "n_test": len(scores),
               "first_token": scores["first_token"].mean(), "exact_match": scores["exact_match"].mean()}
        predictions = pd.concat([predictions, scores[PREDICTION_COLUMNS]], ignore_index=True)
        done = pd.concat([done, pd.DataFrame([row], columns=COLUMNS)], ignore_index=True)
        if out:  # predictions first: a row on disk always has its predictions
            write_rows(predictions_path(Path(out)), predictions)
            write_rows(Path(out), done)
    wanted = done["task"].isin([t.name for t in tasks]) & done["seed"].astype(int).isin(seeds)
    return done[wanted & done["method"].isin(config.methods)].reset_index(drop=True)


def predictions_path(out: Path) -> Path:
    return out.with_name(out.stem + ".predictions.csv")


def _earlier_predictions(out: Path, done: pd.DataFrame) -> pd.DataFrame:
    """Saved predictions of the finished rows (a run killed between the two writes left extras)."""
    path = predictions_path(out)
    if not path.is_file():
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    saved = pd.read_csv(path, keep_default_na=False)  # an empty prediction stays ""
    keys = pd.MultiIndex.from_frame(done[KEY].astype({"seed": int}))
    return saved[pd.MultiIndex.from_frame(saved[KEY].astype({"seed": int})).isin(keys)].reset_index(drop=True)


def _cell(model, task: Task, seed: int, template: Template, config: TableConfig) -> Cell:
    train, test = split_task(task, n_train=config.n_train, seed=seed, max_test=config.max_test)
    return Cell(model, task.name, seed, list(train), list(test), template, config)


METRIC_TITLES = {"exact_match": "Exact match", "first_token": "First-token accuracy", "gpt_eval": "GPT-Eval (LLM judge)"}


def summary_markdown(rows: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str] = ("exact_match", "first_token")) -> str:
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
