"""Figures of head maps (:class:`headsteer.heads.maps.HeadMap`'s tables, or the CSVs a head study saved).

Tables with a ``seed`` column are averaged over seeds (a head's ``stable`` becomes the
share of seeds in which it is stable); layers run down the y axis, layer 0 on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from headsteer.plots.style import COLORS, LAYOUT

STAR = "★"  # marks a stable head (stable in at least half the seeds)


def per_head(heads: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, head): numeric columns averaged over seeds, ``stable``/``fv_top`` as shares of seeds."""
    keep = heads.drop(columns=[c for c in ("seed", "task", "label") if c in heads]).astype(
        {c: float for c in ("stable", "fv_top", "active") if c in heads}
    )
    return keep.groupby(["layer", "head"], as_index=False).mean(numeric_only=True)


def _grid(table: pd.DataFrame, column: str) -> np.ndarray:
    """``column`` as a [layers, heads] array, layers ascending."""
    return table.pivot(index="layer", columns="head", values=column).sort_index().to_numpy(dtype=float)


def _colorbar_below(fig: go.Figure, col: int, title: str) -> dict:
    """A horizontal colour bar under subplot column ``col`` (side-by-side panels cannot share the right edge)."""
    domain = fig.layout[f"xaxis{'' if col == 1 else col}"].domain
    return dict(
        orientation="h",
        x=(domain[0] + domain[1]) / 2,
        len=domain[1] - domain[0],
        y=-0.06,
        yanchor="top",
        thickness=12,
        title=dict(text=title, side="bottom"),
    )


def head_map_heatmaps(heads: pd.DataFrame, layers: pd.DataFrame, task: str = "") -> go.Figure:
    """Layer × head: ‖Δ_h‖₂ at s*, Δ_h alone's causal share, function-vector AIE, selection frequency;
    and each layer's held-out first-token accuracy with its Δ (bars) against zero-shot (line).

    Cell text: the FV's top heads by rank, and the selection frequency with ★ on stable heads.
    """
    table = per_head(heads)
    by_layer = layers.groupby("layer", as_index=False)[["accuracy", "accuracy_zero_shot"]].mean()
    layer_ids = sorted(table["layer"].unique())
    head_ids = sorted(table["head"].unique())
    y = [f"L{layer}" for layer in layer_ids]
    x = [f"H{h}" for h in head_ids]
    titles = ["‖Δ_h‖₂ at the chosen penalty", "causal share of Δ_h alone", "function vector: AIE"]
    titles.append("selection frequency")
    fig = make_subplots(
        rows=1,
        cols=5,
        shared_yaxes=True,
        horizontal_spacing=0.025,
        column_widths=[1, 1, 1, 1, 1.1],
        subplot_titles=[*titles, "held-out accuracy with Δ"],
    )
    aie = _grid(table, "fv_aie")
    bound = float(np.nanmax(np.abs(aie))) if np.isfinite(aie).any() else 1.0
    rank = _grid(table, "fv_rank")
    top = _grid(table, "fv_top") >= 0.5
    rank_text = np.where(top, np.vectorize(lambda r: f"{r:.0f}")(np.nan_to_num(rank)), "")
    freq = _grid(table, "frequency_max")
    stable = _grid(table, "stable") >= 0.5
    freq_text = np.vectorize(lambda f, s: f"{f:.1f}{STAR if s else ''}")(np.nan_to_num(freq), stable)
    panels = [
        (_grid(table, "norm"), dict(colorscale="Blues", zmin=0), "‖Δ_h‖₂", None, "%{z:.2f}"),
        (_grid(table, "sufficiency"), dict(colorscale="RdBu_r", zmid=0, zmin=-1, zmax=1), "share", None, "%{z:.2f}"),
        (aie, dict(colorscale="RdBu_r", zmin=-bound, zmax=bound), "Δp(answer)", rank_text, "%{z:.2e}"),
        (freq, dict(colorscale="Greens", zmin=0, zmax=1), "frequency", freq_text, "%{z:.2f}"),
    ]
    for col, (z, scale, bar_title, text, number) in enumerate(panels, start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=x,
                y=y,
                **scale,
                text=text,
                texttemplate="%{text}" if text is not None else None,
                colorbar=_colorbar_below(fig, col, bar_title),
                hovertemplate=f"%{{y}}.%{{x}}: {number}<extra>{titles[col - 1]}</extra>",
            ),
            row=1,
            col=col,
        )
    accuracy = by_layer.set_index("layer").reindex(layer_ids)
    fig.add_bar(x=accuracy["accuracy"], y=y, orientation="h", marker_color=COLORS[0], name="with Δ", row=1, col=5)
    fig.add_scatter(
        x=accuracy["accuracy_zero_shot"], y=y, mode="lines+markers", line=dict(color="black", dash="dash"),
        name="zero-shot", row=1, col=5,
    )  # fmt: skip
    fig.update_yaxes(autorange="reversed", title_text="layer", row=1, col=1)  # the heads are named on the x ticks
    fig.update_xaxes(title_text="first-token accuracy", rangemode="tozero", row=1, col=5)
    title = f"Which heads Δ uses{f' for {task}' if task else ''}: every layer ({STAR} stable; FV panel: top ranks)"
    return fig.update_layout(
        title=title,
        width=1500,
        height=260 + 30 * len(layer_ids),
        # top right of the whole figure, level with the title: over the panels it would hide their titles
        legend=dict(orientation="h", x=1, xanchor="right", y=0.98, yanchor="top", yref="container"),
        **{**LAYOUT, "margin": dict(l=70, r=30, t=110, b=140)},
    )


def causal_share_heatmaps(heads: pd.DataFrame, task: str = "") -> go.Figure:
    """Layer × head: the share of each layer's held-out loss gain lost without Δ_h, and kept by Δ_h alone."""
    table = per_head(heads)
    y = [f"L{layer}" for layer in sorted(table["layer"].unique())]
    x = [f"H{h}" for h in sorted(table["head"].unique())]
    titles = ["necessity: lost without Δ_h", "sufficiency: kept by Δ_h alone"]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06, subplot_titles=titles)
    for col, column in enumerate(("necessity", "sufficiency"), start=1):
        z = _grid(table, column)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=x,
                y=y,
                zmid=0,
                zmin=-1,
                zmax=1,
                colorscale="RdBu_r",
                showscale=col == 2,
                colorbar=dict(title=dict(text="share of the layer's gain", side="right")),
                text=np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.2f}")(z),
                texttemplate="%{text}",
                hovertemplate=f"%{{y}}.%{{x}}: %{{z:.3f}}<extra>{column}</extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_yaxes(autorange="reversed", title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="head")
    title = f"Causal share of each head on held-out pairs{f' ({task})' if task else ''}: first-token NLL"
    return fig.update_layout(title=title, width=900, height=220 + 30 * len(y), **LAYOUT)


def stability_path(
    path: pd.DataFrame, region: Sequence[float], threshold: float, heads: Sequence[tuple[int, int]] = (), top: int = 8
) -> go.Figure:
    """The λ path with stability bands, for ``heads`` (default: the ``top`` heads chosen earliest on the path).

    Left: each head's selection frequency over the resamples against γ = λ, the threshold
    dashed and the stability region Λ shaded. Right: ‖Δ_h‖₂ on all training pairs
    (line) and the 10–90% band over the resamples.
    """
    resampled = path[path["sample"] > 0].assign(on=lambda t: t["norm"] > 0)
    freq = resampled.groupby(["layer", "head", "strength"], as_index=False)["on"].mean()
    if not heads:
        heads = earliest_chosen(freq, top)
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=["selection frequency over resamples", "‖Δ_h‖₂: all training pairs, and 10–90% of resamples"],
    )
    for i, (layer, head) in enumerate(heads):
        color, name = COLORS[i % len(COLORS)], f"L{layer}.H{head}"
        mine = freq[(freq["layer"] == layer) & (freq["head"] == head)].sort_values("strength")
        fig.add_scatter(
            x=mine["strength"], y=mine["on"], mode="lines+markers", name=name, line=dict(color=color),
            legendgroup=name, row=1, col=1,
        )  # fmt: skip
        norms = resampled[(resampled["layer"] == layer) & (resampled["head"] == head)]
        band = norms.groupby("strength")["norm"].quantile([0.1, 0.9]).unstack().sort_index()
        fig.add_scatter(
            x=[*band.index, *band.index[::-1]], y=[*band[0.9], *band[0.1][::-1]], fill="toself", fillcolor=color,
            mode="lines", opacity=0.2, line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=name,
            row=1, col=2,
        )  # fmt: skip
        full = path[(path["sample"] == 0) & (path["layer"] == layer) & (path["head"] == head)].sort_values("strength")
        fig.add_scatter(
            x=full["strength"], y=full["norm"], mode="lines+markers", line=dict(color=color), showlegend=False,
            legendgroup=name, row=1, col=2,
        )  # fmt: skip
    fig.add_hline(y=threshold, line_dash="dash", line_color="gray", row=1, col=1)
    if region:
        pad = 1.08  # a region of one strength still shows as a band on the log axis
        fig.add_vrect(
            x0=min(region) / pad, x1=max(region) * pad, fillcolor="gray", opacity=0.12, line_width=0, row=1, col=1
        )
    ticks = sorted(path["strength"].unique())
    fig.update_xaxes(
        type="log", autorange="reversed", title_text="penalty strength γ = λ (log scale)", tickvals=ticks,
        ticktext=[f"{t:.2g}" for t in ticks], tickangle=-45,
    )  # fmt: skip
    fig.update_yaxes(title_text="selection frequency", range=[-0.03, 1.03], row=1, col=1)
    fig.update_yaxes(title_text="‖Δ_h‖₂", rangemode="tozero", row=1, col=2)
    task = path["task"].iloc[0] if "task" in path else ""
    title = f"Stability path{f' ({task})' if task else ''}: threshold {threshold:g} dashed, region Λ shaded"
    return fig.update_layout(title=title, width=1300, height=520, **LAYOUT)


def earliest_chosen(freq: pd.DataFrame, top: int) -> list[tuple[int, int]]:
    """The ``top`` heads whose selection frequency is highest earliest on the path (strongest penalty first).

    Heads are ordered by their frequencies read from the strongest strength down, compared like
    words in a dictionary: the heads of the stability region come first, then those that switch on
    next. (The largest frequency anywhere would not do: at a weak penalty every head is chosen.)
    """
    table = freq.pivot_table(index=["layer", "head"], columns="strength", values="on").sort_index(
        axis=1, ascending=False
    )
    ranked = sorted(table.index, key=lambda head: tuple(-table.loc[head].fillna(0.0).to_numpy()))
    return [(int(layer), int(head)) for layer, head in ranked[:top]]


def delta_vs_fv(heads: pd.DataFrame, threshold: float, fv_top_k: int, note: str = "") -> go.Figure:
    """Every head: the function vector's rank (x, log; 1 = largest AIE) against Δ's selection frequency (y).

    Colour: layer; diamonds: Δ's stable heads. Heads right of the dotted line are the FV's
    top ``fv_top_k``; above the dashed line, Δ's stable heads: the top-right corner is where
    the two methods agree. ``note`` (clauses separated by ";") goes under the title.
    """
    table = per_head(heads)
    labels = [f"L{layer:.0f}.H{head:.0f}" for layer, head in zip(table["layer"], table["head"])]
    named = (table["stable"] >= 0.5) | (table["fv_rank"] <= fv_top_k)  # only these are labelled on the plot
    fig = go.Figure(
        go.Scatter(
            x=table["fv_rank"],
            y=table["frequency_max"],
            mode="markers+text",
            text=[label if show else "" for label, show in zip(labels, named)],
            textposition="top center",
            textfont=dict(size=11),
            marker=dict(
                size=11,
                color=table["layer"],
                colorscale="Viridis",
                colorbar=dict(title=dict(text="layer", side="right")),
                symbol=["diamond" if s >= 0.5 else "circle" for s in table["stable"]],
                line=dict(width=0.5, color="black"),
            ),
            customdata=np.stack([labels, table["fv_aie"], table["switch_on"]], axis=-1),
            hovertemplate="%{customdata[0]}: FV rank %{x:.0f} (AIE %{customdata[1]:.2e}), "
            "selection %{y:.2f}, switches on at %{customdata[2]:.3g}<extra></extra>",
        )
    )
    fig.add_hline(y=threshold, line_dash="dash", line_color="gray")
    fig.add_vline(x=fv_top_k + 0.5, line_dash="dot", line_color="gray")
    ticks = [t for t in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000) if t <= table["fv_rank"].max()]
    fig.update_xaxes(
        type="log", autorange="reversed", tickvals=ticks, title_text="function vector: rank by AIE (log; 1 = largest)"
    )
    fig.update_yaxes(title_text="Δ: selection frequency (max over Λ)", range=[-0.05, 1.1])
    task = heads["task"].iloc[0] if "task" in heads else ""
    title = f"Δ's stable heads against the function vector's top {fv_top_k}{f' ({task})' if task else ''}"
    if note:  # one line per clause, so a long list of heads stays on the page
        title += "".join(f"<br><sup>{line.strip()}</sup>" for line in note.split(";"))
    lines = title.count("<br>")
    margin = dict(l=80, r=40, t=80 + 24 * lines, b=70)
    return fig.update_layout(title=title, width=1000, height=620 + 22 * lines, **{**LAYOUT, "margin": margin})


def heads_by_task(heads: pd.DataFrame, value: str = "frequency_max", title: str = "") -> go.Figure:
    """Tasks × heads ("L{layer}.H{head}", by layer): ``value`` per head, ★ on stable heads; maps side by side."""
    rows = []
    for task, part in heads.groupby("task", sort=False):
        rows.append(per_head(part).assign(task=task))
    table = pd.concat(rows, ignore_index=True).sort_values(["layer", "head"])
    table["label"] = [f"L{layer:.0f}.H{head:.0f}" for layer, head in zip(table["layer"], table["head"])]
    grid = table.pivot_table(index="task", columns="label", values=value, sort=False)
    stable = table.pivot_table(index="task", columns="label", values="stable", sort=False).reindex_like(grid)
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=list(grid.columns),
            y=list(grid.index),
            zmin=0,
            zmax=1 if value.startswith("frequency") else None,
            colorscale="Greens",
            colorbar=dict(title=dict(text=value.replace("_", " "), side="right")),
            text=np.where(stable.to_numpy() >= 0.5, STAR, ""),
            texttemplate="%{text}",
            hovertemplate="%{y}, %{x}: %{z:.2f}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="head (layer.head)", tickangle=-90, tickfont=dict(size=10))
    fig.update_yaxes(title_text="task", autorange="reversed")
    title = title or f"Selection frequency of every head, by task ({STAR} stable)"
    width = max(900, 16 * grid.shape[1] + 250)
    return fig.update_layout(title=title, width=width, height=260 + 45 * len(grid), **LAYOUT)


def task_overlap_matrix(overlaps: dict[str, pd.DataFrame]) -> go.Figure:
    """One task × task panel per entry (e.g. Δ's stable heads, the FV's top heads): Jaccard, with |shared| in text.

    Each table is :func:`headsteer.heads.stability.set_overlap`'s (task_a, task_b, n_a, n_b, shared, jaccard).
    """
    names = list(overlaps)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.15)
    for col, name in enumerate(names, start=1):
        table = overlaps[name]
        order = list(dict.fromkeys(table["task_a"]))
        grid = table.pivot(index="task_a", columns="task_b", values="jaccard").reindex(index=order, columns=order)
        shared = table.pivot(index="task_a", columns="task_b", values="shared").reindex(index=order, columns=order)
        sizes = table.drop_duplicates("task_a").set_index("task_a")["n_a"].reindex(order)
        fig.add_trace(
            go.Heatmap(
                z=grid.to_numpy(),
                x=order,
                y=[f"{task} ({n})" for task, n in zip(order, sizes)],
                zmin=0,
                zmax=1,
                colorscale="Purples",
                showscale=col == len(names),
                colorbar=dict(title=dict(text="Jaccard", side="right")),
                text=np.vectorize(lambda j, s: f"{j:.2f}<br>({s:.0f})")(grid.to_numpy(), shared.to_numpy()),
                texttemplate="%{text}",
                hovertemplate="%{y} vs %{x}: Jaccard %{z:.2f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    title = "Do tasks share heads? Jaccard overlap of head sets (shared heads in brackets; set sizes by the names)"
    return fig.update_layout(title=title, width=520 * len(names) + 120, height=520, **LAYOUT)
