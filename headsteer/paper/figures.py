"""Regenerate every figure from saved results: ``headsteer figures --results results --out figures``.

Reads what the sweep (``sweep_*.csv``), the tables (``table.csv``,
``compose.csv``, ``opinion.csv``) and the head maps (``heads/<task>/``) wrote and saves each figure as interactive HTML
(plotly.js once, in the folder, so the pages work offline) and, with
``static=True``, as PNG (2× scale) and as PDF and SVG (vector, for LaTeX) through kaleido,
all figures in one kaleido session. Kaleido drives a Chromium: set
``BROWSER_PATH`` (e.g. ``/usr/bin/chromium`` after ``apt-get install chromium``)
where it cannot find one itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from headsteer import plots
from headsteer.errors import DependencyError, ResultsFileError
from headsteer.files import ArtifactPaths
from headsteer.heads.stability import marked_heads, set_overlap
from headsteer.intervention import Intervention
from headsteer.paper.methods import COMPOSE_METHODS, OPINION_METHODS, TABLE_METHODS
from headsteer.paper.study_files import TABLES, VARIANTS, StudyFiles
from headsteer.paper.summary import with_average

# Static formats beside the HTML, with their kaleido scale: a 2× raster, and vectors for papers.
STATIC_FORMATS = {"png": 2, "pdf": 1, "svg": 1}
FIGURE_LAYER = 4  # the one-layer figures (the paper's Figure 2) go where Δ was also fitted without penalty, else here
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_CHROMIUM = (
    "no Chromium found, so only HTML was written; for PNG, PDF and SVG figures install one (make chromium, or your "
    "system's package) or set BROWSER_PATH to it"
)


def chromium_found() -> bool:
    """Whether kaleido can find a browser to export static images with: ``$BROWSER_PATH`` or one on the PATH."""
    browser = os.environ.get("BROWSER_PATH")
    if browser:
        return Path(browser).is_file()
    return any(shutil.which(name) for name in CHROMIUM_NAMES)


def save_figure(fig: go.Figure, out_dir: Path, stem: str, static: bool = True) -> list[Path]:
    """``stem.html`` (and, with ``static``, ``stem.png``/``.pdf``/``.svg``) in ``out_dir``; see :func:`save_figures`."""
    return save_figures({stem: fig}, out_dir, static)


def save_figures(figures: dict[str, go.Figure], out_dir: Path, static: bool = True) -> list[Path]:
    """Each figure as ``NAME.html`` and, with ``static``, ``NAME.png`` (2× scale), ``NAME.pdf`` and ``NAME.svg``.

    A page's div id is its name, so regenerating an unchanged figure rewrites the same HTML
    bytes. The static files are written in one kaleido session (one Chromium start for all).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, fig in figures.items():
        html = out_dir / f"{stem}.html"
        fig.write_html(html, include_plotlyjs="directory", div_id=stem)
        written.append(html)
    if not static or not figures:
        return written
    images = [
        (fig, out_dir / f"{stem}.{ext}", scale)
        for stem, fig in figures.items()
        for ext, scale in STATIC_FORMATS.items()
    ]
    try:
        pio.write_images(
            [f for f, _, _ in images],
            [p for _, p, _ in images],
            scale=[s for _, _, s in images],
            # write_images sizes every image by plotly's defaults, not by its figure's layout: pass the layout's
            width=[f.layout.width or pio.defaults.default_width for f, _, _ in images],
            height=[f.layout.height or pio.defaults.default_height for f, _, _ in images],
        )
    except Exception as err:  # kaleido's errors name no fix; say what to install
        raise DependencyError(
            f"static export to {out_dir} failed ({type(err).__name__}: {err}). Kaleido needs a Chromium: "
            "install one (Debian: apt-get install chromium) and set BROWSER_PATH=/usr/bin/chromium, "
            "or pass --no-static for HTML only"
        ) from err
    return written + [p for _, p, _ in images]


def sweep_figures(results: Path) -> dict[str, go.Figure]:
    files = sorted(results.glob("sweep_*.csv"))
    if not files:
        return {}
    sweep = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    return {f"layer_sweep_{m}": plots.layer_sweep(sweep, m) for m in ("exact_match", "first_token")}


def table_figures(results: Path) -> dict[str, go.Figure]:
    """Method bars of the comparison (``table.csv``), composition (``compose.csv``) and opinion tables."""
    figures = {}
    for stem, prefix, methods in (("table", "methods", TABLE_METHODS), ("compose", "compose", COMPOSE_METHODS)):
        if (results / f"{stem}.csv").is_file():
            rows = pd.read_csv(results / f"{stem}.csv")
            figures.update(
                {f"{prefix}_{m}": plots.method_bars(rows, list(methods), m) for m in ("exact_match", "first_token")}
            )
    if (results / "opinion.csv").is_file():
        rows = with_average(pd.read_csv(results / "opinion.csv"))
        for metric in [m for m in ("kl", "kl_reverse") if m in rows.columns]:
            figures[f"opinion_{metric}"] = plots.method_bars(rows, list(OPINION_METHODS), metric, what="group")
    return figures


def read_head_map(study: Path) -> dict[str, pd.DataFrame]:
    """A head map's tables (:data:`~headsteer.paper.study_files.TABLES`), each with ``task`` added."""
    files = StudyFiles(study)
    task = json.loads(files.stability.read_text(encoding="utf-8"))["settings"]["task"]
    return {name: pd.read_csv(files.table(name)).assign(task=task) for name in TABLES}


def head_figures(study: Path) -> dict[str, go.Figure]:
    """One task's head map: the layer × head maps, causal shares, stability path and Δ against the FV;
    and at one layer (4 where mapped) the paper's Figure 2 (Δ's entries, head norms) and the λ path."""
    files = StudyFiles(study)
    record = json.loads(files.stability.read_text(encoding="utf-8"))
    tables, name = read_head_map(study), study.name
    task, k = record["settings"]["task"], record["settings"]["map_config"]["fv_top_k"]
    seed, first = min(record["seeds"], key=int), record["seeds"][min(record["seeds"], key=int)]
    heads = tables["heads"]
    path = tables["path"][tables["path"]["seed"] == int(seed)]
    over = tables["fv_overlap"][tables["fv_overlap"]["sample"] > 0]
    note = (
        f"◆ stable: {', '.join(first['stable']) or 'none'}; FV top {k}: {', '.join(first['fv_top'])}; "
        f"Jaccard over resamples {over['jaccard'].mean():.2f} ± {over['jaccard'].std(ddof=1):.2f} "
        f"(shared {over['shared'].mean():.1f}, chance {over['chance_shared'].mean():.1f})"
    )
    figures = {
        f"{name}_head_map": plots.head_map_heatmaps(heads, tables["layers"], task),
        f"{name}_causal_share": plots.causal_share_heatmaps(heads, task),
        f"{name}_stability_path": plots.stability_path(path, first["region"], first["threshold"]),
        f"{name}_delta_vs_fv": plots.delta_vs_fv(heads, first["threshold"], k, note),
    }
    at_seed = heads[heads["seed"] == int(seed)]
    free = at_seed.dropna(subset=["norm_unregularized"])["layer"].unique()  # the layer fitted without penalty
    layers = sorted(at_seed["layer"].unique())
    layer = int(free[0]) if len(free) else FIGURE_LAYER if FIGURE_LAYER in layers else int(layers[0])
    variants = [v for v in VARIANTS if ArtifactPaths(files.intervention(int(seed), layer, v)).meta.is_file()]
    ivs = {v: Intervention.load(files.intervention(int(seed), layer, v)) for v in variants}
    at = at_seed[at_seed["layer"] == layer]
    norms = pd.concat(
        [at.assign(variant="regularized")]
        + ([at.assign(variant="unregularized", norm=at["norm_unregularized"])] if len(free) else [])
    )
    figures[f"{name}_head_heatmap"] = plots.head_heatmap({v: iv.delta for v, iv in ivs.items()}, layer, task)
    figures[f"{name}_head_norms"] = plots.head_norm_bars(norms, f"Per-head norm of Δ ({task}, layer {layer})")
    at_layer = path[(path["sample"] == 0) & (path["layer"] == layer)]
    figures[f"{name}_regularization_path"] = plots.regularization_path(at_layer)
    return figures


def cross_task_figures(studies: list[Path]) -> dict[str, go.Figure]:
    """Every task's selection frequencies side by side, and the overlap of the tasks' stable and FV-top heads."""
    maps = [read_head_map(study) for study in studies]
    heads = pd.concat([m["heads"] for m in maps], ignore_index=True)
    first = heads[heads["seed"] == heads.groupby("task")["seed"].transform("min")]  # each task's first seed
    return {
        "heads_by_task": plots.heads_by_task(heads),
        "heads_task_overlap": plots.task_overlap_matrix(
            {
                "Δ: stable heads": set_overlap(marked_heads(first, "stable")),
                "function vector: top heads": set_overlap(marked_heads(first, "fv_top")),
            }
        ),
    }


def build_figures(results: str | Path, out: str | Path, static: bool = True) -> list[Path]:
    """Every figure the saved results allow; returns the files written (PNG, PDF and SVG too with ``static``)."""
    results, out = Path(results), Path(out)
    figures = {**sweep_figures(results), **table_figures(results)}
    studies = sorted(p for p in (results / "heads").glob("*") if StudyFiles(p).is_complete())
    for study in studies:
        figures.update(head_figures(study))
    if studies:
        figures.update(cross_task_figures(studies))
    if not figures:
        raise ResultsFileError(
            f"no results to draw in {results} (sweep_*.csv, table.csv, compose.csv, opinion.csv or heads/<task>/)"
        )
    return save_figures(figures, out, static)
