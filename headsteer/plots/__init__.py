"""Plotly figures from saved results (tidy DataFrames); nothing here fits or runs a model.

Each function takes the table a results file holds and returns a ``go.Figure``:
here the head heatmap and head-norm bars (the paper's Figure 2), the layer sweep
(Figure 1), one layer's regularization path and method bars; from head maps
(:mod:`headsteer.heads.maps`, drawn in :mod:`headsteer.plots.head_maps`) the
layer × head maps, the stability path, Δ against function vectors, and the maps
and overlap of several tasks. Shared colours and layout: :mod:`headsteer.plots.style`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from headsteer.evaluate import mean_std
from headsteer.plots.head_maps import (
    causal_share_heatmaps,
    delta_vs_fv,
    head_map_heatmaps,
    heads_by_task,
    stability_path,
    task_overlap_matrix,
)
from headsteer.plots.style import COLORS, LAYOUT, MANY_COLORS, METRIC_LABELS

__all__ = [
    "causal_share_heatmaps",
    "delta_vs_fv",
    "head_heatmap",
    "head_map_heatmaps",
    "head_norm_bars",
    "heads_by_task",
    "layer_sweep",
    "method_bars",
    "regularization_path",
    "stability_path",
    "task_overlap_matrix",
]


def head_heatmap(deltas: dict[str, Float[Tensor, "n_heads d_head"]], layer: int, task: str = "") -> go.Figure:
    """Δ's entries, heads × components, one panel per name (e.g. "unregularized", "regularized").

    ``deltas`` maps a panel title to a ``[n_heads, d_head]`` array-like. One colour scale, centred at 0,
    shared by the panels so their magnitudes compare.
    """
    names = list(deltas)
    arrays = [np.asarray(deltas[n], dtype=float) for n in names]
    bound = max(float(abs(a).max()) for a in arrays) or 1.0
    height = sum(max(160, 22 * a.shape[0]) for a in arrays) + 120 * len(arrays)
    gap = 110 / height  # about 110 px between panels (room for the axis title and the next panel's title)
    fig = make_subplots(rows=len(names), cols=1, subplot_titles=names, vertical_spacing=min(gap, 0.3))
    for row, array in enumerate(arrays, start=1):
        fig.add_trace(
            go.Heatmap(
                z=array,
                zmin=-bound,
                zmax=bound,
                colorscale="RdBu",
                reversescale=True,
                coloraxis=None,
                showscale=row == 1,
                colorbar=dict(title="Δ value"),
                y=[f"head {h}" for h in range(array.shape[0])],
                hovertemplate="%{y}, component %{x}: %{z:.4f}<extra></extra>",
            ),
            row=row,
            col=1,
        )
        fig.update_xaxes(title_text="component of Δ_h (d_head index)", row=row, col=1)
        fig.update_yaxes(autorange="reversed", title_text="attention head", row=row, col=1)
    title = f"Δ at layer {layer}{f' ({task})' if task else ''}: heads × components"
    return fig.update_layout(title=title, height=height, width=1000, **LAYOUT)


def head_norm_bars(heads: pd.DataFrame, title: str = "") -> go.Figure:
    """‖Δ_h‖₂ per head, one bar group per ``variant`` column value (e.g. regularized vs not)."""
    fig = go.Figure()
    for i, (variant, part) in enumerate(heads.groupby("variant", sort=False)):
        fig.add_bar(x=[f"head {h}" for h in part["head"]], y=part["norm"], name=str(variant), marker_color=COLORS[i])
    fig.update_layout(title=title or "Per-head norm of Δ", barmode="group", width=800, height=450, **LAYOUT)
    return fig.update_yaxes(title_text="‖Δ_h‖₂").update_xaxes(title_text="attention head")


def layer_sweep(sweep: pd.DataFrame, metric: str = "exact_match") -> go.Figure:
    """Mean ± std over seeds of ``metric`` against layer, one line (and band) per task, zero-shot dashed."""
    fig = go.Figure()
    for i, (task, part) in enumerate(sweep.groupby("task")):
        stats = mean_std(part, by=["layer"], metrics=[metric, f"zero_shot_{metric}"]).sort_values("layer")
        color = COLORS[i % len(COLORS)]
        mean, std = stats[f"{metric}_mean"], stats[f"{metric}_std"]
        fig.add_scatter(
            x=list(stats["layer"]) + list(stats["layer"])[::-1],
            y=list(mean + std) + list(mean - std)[::-1],
            fill="toself",
            fillcolor=color,
            opacity=0.2,
            line=dict(width=0),
            showlegend=False,
            hoverinfo="skip",
        )
        fig.add_scatter(
            x=stats["layer"], y=mean, mode="lines+markers", name=f"{task}: fitted Δ", line=dict(color=color)
        )
        fig.add_scatter(
            x=stats["layer"],
            y=stats[f"zero_shot_{metric}_mean"],
            mode="lines",
            name=f"{task}: zero-shot",
            line=dict(color=color, dash="dash"),
        )
    seeds = sweep.groupby(["task", "layer"]).size().max()
    fig.update_layout(
        title=f"Held-out {METRIC_LABELS.get(metric, metric)} by layer of Δ (mean ± std, {seeds} seeds)",
        width=900,
        height=500,
        **LAYOUT,
    )
    layers = sweep["layer"]
    fig.update_xaxes(title_text="layer ℓ receiving Δ", dtick=1, range=[layers.min() - 0.5, layers.max() + 0.5])
    return fig.update_yaxes(title_text=METRIC_LABELS.get(metric, metric), rangemode="tozero")


def regularization_path(path: pd.DataFrame) -> go.Figure:
    """‖Δ_h‖₂ per head against the penalty strength γ = λ (log axis, decreasing to the right)."""
    fig = go.Figure()
    positive = path[path["strength"] > 0]
    for i, (head, part) in enumerate(positive.groupby("head")):
        part = part.sort_values("strength")
        fig.add_scatter(
            x=part["strength"],
            y=part["norm"],
            mode="lines+markers",
            name=f"head {head}",
            line=dict(color=COLORS[i % len(COLORS)]),
        )
    task, layer = path["task"].iloc[0], path["layer"].iloc[0]
    fig.update_layout(
        title=f"Regularization path ({task}, layer {layer}): heads switch on as γ = λ decreases",
        width=900,
        height=500,
        **LAYOUT,
    )
    ticks = sorted(positive["strength"].unique())
    fig.update_xaxes(
        title_text="penalty strength γ = λ (log scale; 0 not shown)",
        type="log",
        autorange="reversed",
        tickvals=ticks,
        ticktext=[f"{t:g}" for t in ticks],
    )
    return fig.update_yaxes(title_text="‖Δ_h‖₂")


def method_bars(
    rows: pd.DataFrame, methods: Sequence[str], metric: str = "exact_match", what: str = "task"
) -> go.Figure:
    """Mean ``metric`` of each method per task (``what`` names the x axis, e.g. "group"); error bars: std over seeds."""
    stats = mean_std(rows, by=["task", "method"], metrics=[metric])
    fig = go.Figure()
    for i, method in enumerate(m for m in methods if m in set(stats["method"])):
        part = stats[stats["method"] == method]
        fig.add_bar(
            x=part["task"],
            y=part[f"{metric}_mean"],
            name=method,
            marker_color=MANY_COLORS[i % len(MANY_COLORS)],
            error_y=dict(type="data", array=part[f"{metric}_std"]),
        )
    seeds = int(stats["seeds"].max())
    fig.update_layout(
        title=f"Held-out {METRIC_LABELS.get(metric, metric)} by method (mean ± std over {seeds} seeds)",
        barmode="group",
        width=1100,
        height=520,
        legend=dict(font=dict(size=11)),
        **LAYOUT,
    )
    return fig.update_yaxes(title_text=METRIC_LABELS.get(metric, metric), rangemode="tozero").update_xaxes(
        title_text=what
    )
