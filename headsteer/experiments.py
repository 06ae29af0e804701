"""Seeded fit-and-evaluate runs: zero-shot against the fitted Δ, as tidy DataFrames."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import pandas as pd

from headsteer.config import FitConfig
from headsteer.evaluate import evaluate_pairs, summarize
from headsteer.fit import fit
from headsteer.prompts import Template
from headsteer.tasks import Task, split_task


def zero_shot_vs_fitted(
    model,
    task: Task,
    template: Template,
    config: FitConfig,
    seeds: Sequence[int] = (0, 1, 2),
    n_train: int = 10,
    max_test: int | None = 200,
    progress: bool = True,
) -> pd.DataFrame:
    """For each seed: split, fit Δ on the training pairs, score zero-shot and Δ on the test pairs.

    One row per (seed, method) with first_token, exact_match, n and the fit's final task loss.
    """
    rows = []
    for seed in seeds:
        train, test = split_task(task, n_train=n_train, seed=seed, max_test=max_test)
        result = fit(model, train, template, replace(config, seed=seed), task=task.name, progress=progress)
        for method, ivs in (("zero-shot", ()), ("fitted Δ", (result.intervention,))):
            scores = summarize(evaluate_pairs(model, test, template, ivs, progress=progress))
            rows.append({"task": task.name, "seed": seed, "method": method, **scores})
        rows[-1]["final_task_loss"] = float(result.history["task_loss"].iloc[-1])
    return pd.DataFrame(rows)
