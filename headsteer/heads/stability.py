"""Stability selection over a λ path (Meinshausen & Bühlmann 2010), and set overlaps; tables in, tables out.

A head is *selected* by a fit when ‖Δ_h‖₂ > 0. Over the B resamples (samples 1..B
of a path table; sample 0 is the whole training set) its selection frequency at
strength s is Π̂_h(s) = #{b: ‖Δ^{(b)}_h(s)‖₂ > 0} / B. The strengths are read from
the strongest down; the region Λ is the longest run from the top on which the
resamples select, on average, at most q_max heads in all,

    q(s) = mean_b |∪_{s' ≥ s} Ŝ_b(s')| ≤ q_max = √(E_V · (2π_thr − 1) · p),

and a head is **stable** when max_{s∈Λ} Π̂_h(s) ≥ π_thr. Meinshausen & Bühlmann's
bound then reads E[false stable heads] ≤ q_Λ² / ((2π_thr − 1) p) ≤ E_V, for p heads in
all, under their exchangeability assumption (which nobody can check here: read it
as a scale, not a guarantee). Nothing here reads a held-out pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import takewhile

import pandas as pd

from headsteer.hooks import head_label

HeadSet = frozenset[tuple[int, int]]  # (layer, head) pairs


@dataclass(frozen=True)
class Stability:
    """The outcome of stability selection on one path (see the module docstring).

    ``region`` holds the strengths of Λ, strongest first (empty when even the strongest
    selects more than ``q_max`` heads on average); ``q`` is q(s) at Λ's weakest strength;
    ``heads`` has one row per (layer, head): frequency_chosen (Π̂ at ``chosen``),
    frequency_max (max over Λ), stable.
    """

    threshold: float
    expected_false: float
    n_heads: int
    q_max: float
    region: tuple[float, ...]
    q: float
    error_bound: float
    chosen: float
    heads: pd.DataFrame

    @property
    def stable(self) -> HeadSet:
        rows = self.heads[self.heads["stable"]]
        return frozenset(zip(rows["layer"].astype(int), rows["head"].astype(int)))

    def stable_labels(self) -> list[str]:
        """The stable heads as "L{layer}.H{head}", by layer then head."""
        return [head_label(layer, head) for layer, head in sorted(self.stable)]


def selected(path: pd.DataFrame) -> pd.DataFrame:
    """The path's rows with ``selected`` (‖Δ_h‖₂ > 0) added."""
    return path.assign(selected=path["norm"] > 0)


def selection_frequencies(path: pd.DataFrame) -> pd.DataFrame:
    """strength, layer, head, frequency: the share of resamples (sample ≥ 1) that select each head at each strength."""
    resampled = selected(path[path["sample"] > 0])
    if resampled.empty:
        raise ValueError("selection frequencies need resamples (sample >= 1) in the path table")
    freq = resampled.groupby(["strength", "layer", "head"], as_index=False).agg(frequency=("selected", "mean"))
    return freq.sort_values(["strength", "layer", "head"], ascending=[False, True, True], ignore_index=True)


def cumulative_selections(path: pd.DataFrame) -> pd.DataFrame:
    """sample, strength, n_selected: the number of heads selected at ``strength`` or any stronger one."""
    rows = []
    marked = selected(path)
    for sample in sorted(marked["sample"].unique()):
        part = marked[marked["sample"] == sample]
        seen: set[tuple[int, int]] = set()
        for strength in sorted(part["strength"].unique(), reverse=True):
            at = part[(part["strength"] == strength) & part["selected"]]
            seen |= set(zip(at["layer"].astype(int), at["head"].astype(int)))
            rows.append({"sample": int(sample), "strength": float(strength), "n_selected": len(seen)})
    return pd.DataFrame(rows)


def stability_selection(
    path: pd.DataFrame, chosen: float, threshold: float = 0.75, expected_false: float = 1.0
) -> Stability:
    """Stability selection on a path table (sample, strength, layer, head, norm); see the module docstring."""
    if not 0.5 < threshold <= 1:
        raise ValueError(f"the threshold must be in (0.5, 1], got {threshold!r}")
    if not expected_false > 0:
        raise ValueError(f"the expected number of false selections must be > 0, got {expected_false!r}")
    freq = selection_frequencies(path)
    keys = path[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"], ignore_index=True)
    p = len(keys)
    q_max = math.sqrt(expected_false * (2 * threshold - 1) * p)
    sizes = cumulative_selections(path[path["sample"] > 0]).groupby("strength")["n_selected"].mean()
    region = tuple(takewhile(lambda s: sizes[s] <= q_max, sorted(sizes.index, reverse=True)))
    q = float(sizes[region[-1]]) if region else 0.0
    in_region = freq[freq["strength"].isin(region)].groupby(["layer", "head"])["frequency"].max()
    at_chosen = freq[freq["strength"] == chosen].set_index(["layer", "head"])["frequency"]
    index = pd.MultiIndex.from_frame(keys)
    heads = keys.assign(
        frequency_chosen=at_chosen.reindex(index).to_numpy(),
        frequency_max=in_region.reindex(index).fillna(0.0).to_numpy(),
    )
    heads["stable"] = heads["frequency_max"] >= threshold
    bound = q * q / ((2 * threshold - 1) * p)
    return Stability(threshold, expected_false, p, q_max, region, q, bound, chosen, heads)


def union_selection(path: pd.DataFrame, strengths: Iterable[float]) -> dict[int, HeadSet]:
    """Per sample: the heads selected at any of ``strengths``."""
    wanted = selected(path[path["strength"].isin(list(strengths))])
    on = wanted[wanted["selected"]]
    return {
        int(sample): frozenset(zip(part["layer"].astype(int), part["head"].astype(int)))
        for sample in sorted(path["sample"].unique())
        for part in [on[on["sample"] == sample]]
    }


def top_heads(effects: pd.DataFrame, k: int) -> HeadSet:
    """The ``k`` heads with the largest ``aie`` (a function-vector effects table)."""
    top = effects.sort_values("aie", ascending=False, kind="stable").head(k)
    return frozenset(zip(top["layer"].astype(int), top["head"].astype(int)))


def jaccard(a: HeadSet, b: HeadSet) -> float:
    """|a ∩ b| / |a ∪ b| (1 for two empty sets)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def fv_agreement(path: pd.DataFrame, region: Iterable[float], fv_effects: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per sample: Δ's heads selected anywhere in ``region`` against the FV's top-``k`` heads.

    ``fv_effects`` has a ``sample`` column (one FV ranking per sample, as the map computes
    them) or none (one ranking for every sample). Columns: sample, n_delta, n_fv,
    shared, jaccard, and chance_shared = n_delta · n_fv / p, the overlap two random
    sets of these sizes would have on average.
    """
    p = len(path[["layer", "head"]].drop_duplicates())
    rows = []
    for sample, delta in union_selection(path, region).items():
        effects = fv_effects[fv_effects["sample"] == sample] if "sample" in fv_effects else fv_effects
        if effects.empty:
            effects = fv_effects[fv_effects["sample"] == 0]  # resamples without their own FV: the full one
        fv = top_heads(effects, k)
        rows.append(
            {
                "sample": sample,
                "n_delta": len(delta),
                "n_fv": len(fv),
                "shared": len(delta & fv),
                "jaccard": jaccard(delta, fv),
                "chance_shared": len(delta) * len(fv) / p,
            }
        )
    return pd.DataFrame(rows)


def marked_heads(heads: pd.DataFrame, column: str) -> dict[str, HeadSet]:
    """Per task, in order of appearance: the (layer, head) pairs whose ``column`` is true (a task with none: ∅)."""
    sets = {}
    for task, part in heads.groupby("task", sort=False):
        on = part[part[column].astype(bool)]
        sets[str(task)] = frozenset(zip(on["layer"].astype(int), on["head"].astype(int)))
    return sets


def set_overlap(sets: Mapping[str, HeadSet]) -> pd.DataFrame:
    """Pairwise overlap of named head sets (e.g. each task's stable heads; :func:`marked_heads` builds them).

    Returns task_a, task_b, n_a, n_b, shared, jaccard for every ordered pair of names
    (the diagonal included), so it pivots straight into a matrix.
    """
    return pd.DataFrame(
        [
            {
                "task_a": a,
                "task_b": b,
                "n_a": len(sets[a]),
                "n_b": len(sets[b]),
                "shared": len(sets[a] & sets[b]),
                "jaccard": jaccard(sets[a], sets[b]),
            }
            for a in sets
            for b in sets
        ]
    )
