"""Regenerate every figure from saved results: ``headsteer figures --results results --out figures``.

Reads what the sweep (``sweep_*.csv``), the tables (``table.csv``,
``compose.csv``, ``opinion.csv``) and the head study (``heads/<task>/``) wrote and saves each figure as interactive HTML
(plotly.js once, in the folder, so the pages work offline) and, with
``static=True``, as PNG through kaleido. Kaleido drives a Chromium: set
``BROWSER_PATH`` (e.g. ``/usr/bin/chromium`` after ``apt-get install chromium``)
where it cannot find one itself.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from headsteer import plots
from headsteer.errors import DependencyError, ResultsFileError
from headsteer.heads import head_overlap
from headsteer.intervention import Intervention
from headsteer.paper.methods import COMPOSE_METHODS, OPINION_METHODS, TABLE_METHODS
from headsteer.paper.study_files import VARIANTS, StudyFiles
from headsteer.paper.summary import with_average

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_CHROMIUM = (
    "no Chromium found, so only HTML was written; for PNG figures install one (make chromium, or your "
    "system's package) or set BROWSER_PATH to it"
)


def chromium_found() -> bool:
    """Whether kaleido can find a browser to export static images with: ``$BROWSER_PATH`` or one on the PATH."""
    browser = os.environ.get("BROWSER_PATH")
    if browser:
        return Path(browser).is_file()
    return any(shutil.which(name) for name in CHROMIUM_NAMES)


def save_figure(fig: go.Figure, out_dir: Path, stem: str, static: bool = True) -> list[Path]:
    """``stem.html`` (and ``stem.png`` at 2× scale) in ``out_dir``; the page's div id is ``stem``, so
    regenerating an unchanged figure rewrites the same bytes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / f"{stem}.html"
    fig.write_html(html, include_plotlyjs="directory", div_id=stem)
    if not static:
        return [html]
    png = out_dir / f"{stem}.png"
    try:
        fig.write_image(png, scale=2)
    except Exception as err:  # kaleido's errors name no fix; say what to install
        raise DependencyError(
            f"static export of {png.name} failed ({type(err).__name__}: {err}). Kaleido needs a Chromium: "
            "install one (Debian: apt-get install chromium) and set BROWSER_PATH=/usr/bin/chromium, "
            "or pass --no-static for HTML only"
        ) from err
    return [html, png]


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


def head_figures(study: Path) -> dict[str, go.Figure]:
    """Figure 2 (heatmap, norm bars), the regularization path and the Δ-vs-FV heads for one task."""
    files = StudyFiles(study)
    ivs = {v: Intervention.load(files.intervention(v)) for v in VARIANTS}
    task, layer, name = ivs["regularized"].task, ivs["regularized"].layer, study.name
    heads = pd.read_csv(files.heads)
    k = max(1, heads["head"].nunique() // 2)  # half of the layer's heads (2 of Gemma 3 270M's 4)
    top, overlap = head_overlap(heads[heads["variant"] == "regularized"], pd.read_csv(files.fv_effects), k)
    return {
        f"{name}_head_heatmap": plots.head_heatmap({v: iv.delta for v, iv in ivs.items()}, layer, task),
        f"{name}_head_norms": plots.head_norm_bars(heads, f"Per-head norm of Δ ({task}, layer {layer})"),
        f"{name}_regularization_path": plots.regularization_path(pd.read_csv(files.path)),
        f"{name}_delta_vs_fv_heads": plots.head_comparison(top, overlap, task),
    }


def build_figures(results: str | Path, out: str | Path, static: bool = True) -> list[Path]:
    """Every figure the saved results allow; returns the files written (PNGs too with ``static``)."""
    results, out = Path(results), Path(out)
    figures = {**sweep_figures(results), **table_figures(results)}
    studies = sorted(p for p in (results / "heads").glob("*") if StudyFiles(p).heads.is_file())
    for study in studies:
        figures.update(head_figures(study))
    if studies:
        heads = pd.concat([pd.read_csv(StudyFiles(study).heads) for study in studies], ignore_index=True)
        figures["heads_by_task"] = plots.head_share_by_task(heads[heads["variant"] == "regularized"])
    if not figures:
        raise ResultsFileError(
            f"no results to draw in {results} (sweep_*.csv, table.csv, compose.csv, opinion.csv or heads/<task>/)"
        )
    return [p for stem, fig in figures.items() for p in save_figure(fig, out, stem, static)]
