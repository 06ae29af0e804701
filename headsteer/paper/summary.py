"""Markdown summaries of a method table's rows, and the opinion table's average over groups.

Both read saved rows only (one per task, method, seed), so the command line
and the figures use them without importing the experiments.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from headsteer.evaluate import format_mean_std, mean_std, run_on

METRIC_TITLES = {
    "exact_match": "Exact match",
    "first_token": "First-token accuracy",
    "gpt_eval": "GPT-Eval (LLM judge)",
    "run_on": "Run-on share: the answer's first token is right but the answer is not the target, lower is better",
    "kl": "KL(group ‖ model) on held-out questions, lower is better",
    "kl_reverse": "KL(model ‖ group), the paper's direction (group smoothed by 1% uniform), lower is better",
}
AVERAGE = "average"  # the task name of the mean over an opinion table's groups


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
        by_method = table.pivot(index="method", columns="task", values=metric)
        by_method = by_method.reindex([m for m in methods if m in by_method.index])
        note = ", (n) = seeds in the cell" if uneven else ""
        parts.append(f"{title} (mean ± std over seeds{note})\n\n" + by_method.to_markdown())
    return "\n\n".join(parts) + "\n"


def with_run_on(rows: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Method ``rows`` (one per task, method, seed) with ``run_on``: that cell's share of run-on predictions.

    ``predictions`` has one row per held-out item (task, method, seed, first_token, exact_match), as the
    table's ``OUT.predictions.csv``; a cell without predictions gets no value.
    """
    keys = ["task", "method", "seed"]
    share = predictions.assign(run_on=run_on(predictions)).groupby(keys, as_index=False)["run_on"].mean()
    return rows.drop(columns="run_on", errors="ignore").merge(share, on=keys, how="left")


def with_average(rows: pd.DataFrame, metrics: Sequence[str] = ("kl", "kl_reverse")) -> pd.DataFrame:
    """Opinion ``rows`` plus, per (method, seed), each metric's mean over groups as task "average" (if all have it)."""
    present = [m for m in metrics if m in rows.columns]
    n_groups = rows["task"].nunique()
    by = rows.groupby(["method", "seed"])
    complete = by["task"].nunique() == n_groups
    mean = by[present].mean()[complete].reset_index()
    return pd.concat([rows, mean.assign(task=AVERAGE)], ignore_index=True)
