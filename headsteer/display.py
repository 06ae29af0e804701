"""HTML summaries for Jupyter: where Δ lives, its shape and sparsity, its top heads, and how a fit went.

Plain HTML with inline bars, no plotting library. The core types know nothing
of this module: importing headsteer registers these summaries with IPython's
HTML formatter (:func:`register`), so an ``Intervention`` or ``FitResult`` at
the end of a notebook cell shows as a table.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import torch

from headsteer.fitting.loop import FitResult
from headsteer.intervention import Intervention


def _rows(pairs: Sequence[tuple[str, Any]]) -> str:
    return "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in pairs
    )


def head_bars(norms: torch.Tensor, top: int = 8) -> str:
    """The ``top`` heads by ‖Δ_h‖₂ as a table with proportional bars."""
    values = norms.tolist()
    order = sorted(range(len(values)), key=lambda h: -values[h])[:top]
    largest = max(values) or 1.0
    cells = "".join(
        f"<tr><td>head {h}</td><td style='text-align:right'>{values[h]:.4g}</td>"
        f"<td><div style='background:#4c78a8;height:0.8em;width:{120 * values[h] / largest:.0f}px'></div></td></tr>"
        for h in order
    )
    return f"<table><tr><th>head</th><th>‖Δ_h‖₂</th><th></th></tr>{cells}</table>"


def intervention_html(iv: Intervention) -> str:
    """A summary of an :class:`~headsteer.intervention.Intervention`."""
    active = iv.active_heads()
    summary = _rows(
        [
            ("task", iv.task or "—"),
            ("model", iv.model.name),
            ("hook", iv.hook_name),
            ("Δ shape", f"[{iv.delta.shape[0]} heads × {iv.delta.shape[1]}]"),
            ("zeros", f"{iv.sparsity():.1%} of entries"),
            ("active heads", f"{len(active)} of {iv.delta.shape[0]}: {active}"),
            ("‖Δ‖₂", f"{float(iv.delta.norm()):.4g}"),
        ]
    )
    return f"<div><b>Intervention</b><table>{summary}</table><b>Top heads</b>{head_bars(iv.head_norms())}</div>"


def fit_result_html(result: FitResult) -> str:
    """An :class:`~headsteer.fitting.loop.FitResult`: its intervention and how the fit went."""
    config, history = result.config, result.history
    first, last = history.iloc[0], history.iloc[-1]
    fit = _rows(
        [
            ("optimizer", f"{config.optimizer}, {config.steps} steps, lr {config.lr:g}"),
            ("γ, λ", f"{config.gamma:g}, {config.lam:g}"),
            ("loss", config.loss),
            ("objective", f"{first['objective']:.4g} → {last['objective']:.4g}"),
            ("task loss", f"{first['task_loss']:.4g} → {last['task_loss']:.4g}"),
        ]
    )
    return f"<div><b>Fit</b><table>{fit}</table>{intervention_html(result.intervention)}</div>"


def register() -> bool:
    """Show interventions and fit results as HTML in the running IPython (Jupyter) shell; False outside one."""
    try:
        from IPython import get_ipython
    except ImportError:  # no IPython installed: nothing to register with
        return False
    shell = get_ipython()
    if shell is None:
        return False
    formatter = shell.display_formatter.formatters["text/html"]
    formatter.for_type(Intervention, intervention_html)
    formatter.for_type(FitResult, fit_result_html)
    return True


register()
