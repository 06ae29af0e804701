"""Seeded fit-and-evaluate runs: zero-shot against the fitted Δ, as tidy DataFrames."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from headsteer.config import FitConfig
from headsteer.evaluate import evaluate_pairs, summarize
from headsteer.files import write_json_atomic
from headsteer.fit import FitResult, fit
from headsteer.forward import naive_scored_logits
from headsteer.prompts import Template
from headsteer.tasks import Pair, Task, split_task


@dataclass(frozen=True)
class Run:
    """One seeded fit with its held-out scores."""

    result: FitResult
    train: list[Pair]
    test: list[Pair]
    zero_shot: pd.DataFrame  # evaluate_pairs table without Δ
    fitted: pd.DataFrame  # evaluate_pairs table with Δ

    def metrics(self) -> dict:
        iv = self.result.intervention
        return {
            "task": iv.task,
            "model": iv.model.name,
            "layer": iv.layer,
            "fit_config": iv.fit_config,
            "template": iv.template,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "train_inputs": [p.input for p in self.train],
            "final_task_loss": float(self.result.history["task_loss"].iloc[-1]),
            "active_heads": iv.active_heads(),
            "zero_shot": summarize(self.zero_shot),
            "fitted": summarize(self.fitted),
        }

    def save(self, out: str | Path) -> Path:
        """Intervention (``out.safetensors`` + ``out.json``), ``out.metrics.json`` and ``out.history.csv``."""
        out = Path(out)
        self.result.intervention.save(out)
        self.result.history.to_csv(out.with_name(out.name + ".history.csv"), index=False)
        return write_json_atomic(out.with_name(out.name + ".metrics.json"), self.metrics())


def fit_and_score(
    model,
    task: Task,
    template: Template,
    config: FitConfig,
    n_train: int = 10,
    max_test: int | None = 200,
    progress: bool = True,
    fast: bool = True,
) -> Run:
    """Split with ``config.seed``, fit on the training pairs, score zero-shot and Δ on the test pairs.

    ``fast=False`` fits with the naive full forward (the reference) instead of the prefix cache.
    """
    train, test = split_task(task, n_train=n_train, seed=config.seed, max_test=max_test)
    forward = None if fast else naive_scored_logits
    result = fit(model, train, template, config, task=task.name, forward=forward, progress=progress)
    zero = evaluate_pairs(model, test, template, (), progress=progress)
    fitted = evaluate_pairs(model, test, template, (result.intervention,), progress=progress)
    return Run(result, train, test, zero, fitted)


def zero_shot_vs_fitted(
    model,
    task: Task,
    template: Template,
    config: FitConfig,
    seeds: Sequence[int] = (0, 1, 2),
    n_train: int = 10,
    max_test: int | None = 200,
    progress: bool = True,
    fast: bool = True,
) -> pd.DataFrame:
    """One row per (seed, method): first_token, exact_match, n, for zero-shot and the fitted Δ."""
    rows = []
    for seed in seeds:
        run = fit_and_score(model, task, template, replace(config, seed=seed), n_train, max_test, progress, fast)
        for method, scores in (("zero-shot", run.zero_shot), ("fitted Δ", run.fitted)):
            rows.append({"task": task.name, "layer": config.layer, "seed": seed, "method": method, **summarize(scores)})
    return pd.DataFrame(rows)

