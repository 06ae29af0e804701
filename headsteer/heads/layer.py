"""One layer's heads: head-norm tables, the regularization path, and overlap with function-vector heads.

The analysis fits and tabulates; it draws nothing (:mod:`headsteer.plots` draws
these tables, e.g. ``plots.regularization_path`` the table
:func:`fit_regularization_path` returns).

A head h is *active* in Δ when ‖Δ_h‖₂ > 0 (the group penalty λ Σ_h ‖Δ_h‖₂
zeroes whole heads). Along a path of penalty strengths s₁ > s₂ > … (γ = λ = s,
each fitted independently, all in one batch), a head *switches on* at the
largest s where it is active: the heads the task needs most switch on first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pandas as pd

from headsteer.config import FitConfig
from headsteer.fitting.loop import FitJob, FitResult, fit_many
from headsteer.hooks import head_label
from headsteer.intervention import Intervention
from headsteer.prompts import Template
from headsteer.tasks import Pair

DEFAULT_PATH: tuple[float, ...] = (0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002, 0.0)


def head_table(interventions: Sequence[Intervention]) -> pd.DataFrame:
    """One row per (intervention, head): task, layer, head, norm, share of Δ's norm², rank (1 = largest), active."""
    frames = []
    for iv in interventions:
        norms = iv.head_norms().tolist()
        total = sum(n * n for n in norms) or 1.0
        frame = pd.DataFrame({"task": iv.task, "layer": iv.layer, "head": range(len(norms)), "norm": norms})
        frame["share"] = frame["norm"] ** 2 / total
        frame["rank"] = frame["norm"].rank(ascending=False, method="first").astype(int)
        frame["active"] = frame["norm"] > 0
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def fit_regularization_path(
    model,
    pairs: Sequence[Pair],
    template: Template,
    base: FitConfig = FitConfig(),
    strengths: Sequence[float] = DEFAULT_PATH,
    task: str = "",
    progress: bool = True,
) -> pd.DataFrame:
    """Head norms of Δ fitted with γ = λ = s for each s in ``strengths`` (one batched fit); see :func:`path_table`."""
    return path_table(fit_many(model, path_jobs(pairs, base, strengths, task), template, progress=progress))


def path_jobs(pairs: Sequence[Pair], base: FitConfig, strengths: Sequence[float], task: str = "") -> list[FitJob]:
    """One fit per strength s: ``base`` with γ = λ = s (batch them with others through ``fit_many``)."""
    if not strengths:
        raise ValueError("regularization path: no strengths")
    return [FitJob(tuple(pairs), replace(base, gamma=s, lam=s), task) for s in strengths]


def path_table(results: Sequence[FitResult]) -> pd.DataFrame:
    """Rows: task, layer, strength (the fit's γ = λ), head, norm, active, final task loss of that fit."""
    table = head_table([r.intervention for r in results])
    per_fit = len(table) // len(results)
    table.insert(2, "strength", [r.config.gamma for r in results for _ in range(per_fit)])
    table["task_loss"] = [float(r.history["task_loss"].iloc[-1]) for r in results for _ in range(per_fit)]
    return table.drop(columns=["share", "rank"])


def switch_on(path: pd.DataFrame) -> pd.DataFrame:
    """Per (task, layer, head): the largest strength at which the head is active, and its order (1 = first on)."""
    active = path[path["active"]]
    first = active.groupby(["task", "layer", "head"], as_index=False)["strength"].max()
    first = first.rename(columns={"strength": "switch_on_strength"})
    keys = path[["task", "layer", "head"]].drop_duplicates()
    out = keys.merge(first, how="left", on=["task", "layer", "head"])
    out["order"] = out.groupby(["task", "layer"])["switch_on_strength"].rank(ascending=False, method="min")
    return out.sort_values(["task", "layer", "order"], na_position="last").reset_index(drop=True)


def head_overlap(delta_heads: pd.DataFrame, fv_effects: pd.DataFrame, k: int) -> tuple[pd.DataFrame, float]:
    """Side by side: the top-``k`` heads by ‖Δ_h‖ and by function-vector AIE, over the layers Δ was fitted at.

    Returns the table (rank, delta_head like "L4.H2", delta_norm, fv_head, fv_aie, and whether each
    side's head is in the other's top k) and the overlap |top-k Δ ∩ top-k FV| / k.
    """
    layers = set(delta_heads["layer"])
    fv = fv_effects[fv_effects["layer"].isin(layers)].sort_values("aie", ascending=False).head(k)
    delta = delta_heads.sort_values("norm", ascending=False).head(k)
    if len(delta) < k or len(fv) < k:
        raise ValueError(f"head_overlap: k={k} but only {min(len(delta), len(fv))} heads at layers {sorted(layers)}")
    d_heads, f_heads = head_labels(delta), head_labels(fv)
    table = pd.DataFrame(
        {
            "rank": range(1, k + 1),
            "delta_head": d_heads,
            "delta_norm": delta["norm"].to_list(),
            "fv_head": f_heads,
            "fv_aie": fv["aie"].to_list(),
            "delta_head_in_fv_top": [h in f_heads for h in d_heads],
            "fv_head_in_delta_top": [h in d_heads for h in f_heads],
        }
    )
    return table, len(set(d_heads) & set(f_heads)) / k


def head_labels(frame: pd.DataFrame) -> list[str]:
    """ "L{layer}.H{head}" for each row of a table with ``layer`` and ``head`` columns."""
    return [head_label(int(layer), int(head)) for layer, head in zip(frame["layer"], frame["head"])]
