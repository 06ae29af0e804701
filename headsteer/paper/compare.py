"""Zero-shot against the fitted Δ over several seeds (``headsteer compare``; ``results/*_layer4.csv``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pandas as pd

from headsteer.config import FitConfig
from headsteer.evaluate import DEFAULT_MAX_NEW_TOKENS, summarize
from headsteer.prompts import Template
from headsteer.runs import fit_and_score
from headsteer.tasks import Task


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
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> pd.DataFrame:
    """One row per (seed, method): first_token, exact_match, n, for zero-shot and the fitted Δ.

    Each seed splits, fits and scores as :func:`headsteer.runs.fit_and_score` (``config.seed`` is replaced).
    """
    rows = []
    for seed in seeds:
        seeded = replace(config, seed=seed)
        run = fit_and_score(model, task, template, seeded, n_train, max_test, progress, fast, max_new_tokens)
        for method, scores in (("zero-shot", run.zero_shot), ("fitted Δ", run.fitted)):
            rows.append({"task": task.name, "layer": config.layer, "seed": seed, "method": method, **summarize(scores)})
    return pd.DataFrame(rows)
