"""Choose the penalty strength γ = λ = s by k-fold cross-validation on the training pairs alone.

For each strength s in a grid and each fold j (the N training pairs split in
k parts), fit Δ_{s,j} on the other k−1 parts with γ = λ = s, then score it on
part j by the task loss. The chosen strength minimises the mean held-out loss

    s* = argmin_s (1/N) Σ_j Σ_{i ∈ fold j} L_task(model_{Δ_{s,j}}(x_i), y_i)

and the returned intervention is refitted on all N pairs with γ = λ = s*.
No test pair is read, so the tuned Δ sees exactly the labels the other
methods see. All k × |grid| fits run as one batch (:func:`headsteer.fitting.loop.fit_many`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import pandas as pd
import torch

from headsteer.config import FitConfig
from headsteer.errors import ConfigError
from headsteer.fitting.forward import PrefixCachedForward
from headsteer.fitting.loop import FitJob, FitResult, fit, fit_many, frozen
from headsteer.fitting.losses import scored_positions, task_loss
from headsteer.prompts import Template, encode_targets
from headsteer.tasks import Pair

DEFAULT_GRID: tuple[float, ...] = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1)
DEFAULT_FOLDS = 5


def folds(pairs: Sequence[Pair], k: int, seed: int) -> list[list[Pair]]:
    """``pairs`` shuffled by ``seed`` and dealt into ``k`` folds (sizes differ by at most one)."""
    if not 2 <= k <= len(pairs):
        raise ConfigError(f"cross-validation needs 2 <= k <= {len(pairs)} pairs, got k={k}")
    order = list(pairs)
    random.Random(seed).shuffle(order)
    return [order[j::k] for j in range(k)]


def cross_validate(
    model,
    pairs: Sequence[Pair],
    template: Template,
    base: FitConfig,
    grid: Sequence[float] = DEFAULT_GRID,
    k: int = DEFAULT_FOLDS,
    task: str = "",
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (strength, fold): the held-out task loss of Δ fitted with γ = λ = strength."""
    if not grid:
        raise ValueError("cross_validate: empty strength grid")
    parts = folds(pairs, k, base.seed)
    cases = [(s, j) for s in grid for j in range(k)]
    jobs = [
        FitJob(tuple(p for i, part in enumerate(parts) if i != j for p in part), replace(base, gamma=s, lam=s), task)
        for s, j in cases
    ]
    results = fit_many(model, jobs, template, progress=progress)
    losses = [heldout_loss(model, r, parts[j], template) for r, (_, j) in zip(results, cases)]
    return pd.DataFrame(
        [
            {"strength": s, "fold": j, "n_heldout": len(parts[j]), "heldout_loss": loss}
            for (s, j), loss in zip(cases, losses)
        ]
    )


@torch.no_grad()
def heldout_loss(model, result: FitResult, pairs: Sequence[Pair], template: Template) -> float:
    """Mean task loss of ``result``'s Δ on ``pairs`` (the loss it was fitted with)."""
    config = result.config
    tokens, targets = encode_targets(model.tokenizer, template, pairs, include_stop=config.loss == "sequence")
    delta = result.intervention.delta.to(model.cfg.device)
    with frozen(model):
        scored = PrefixCachedForward()(model, config.layer, tokens, delta, scored_positions(config.loss, targets))
        return float(task_loss(config.loss, scored, targets).mean())


def best_strength(cv: pd.DataFrame) -> float:
    """The strength with the lowest held-out loss, averaged over pairs (ties: the larger strength)."""
    weighted = cv.assign(total=cv["heldout_loss"] * cv["n_heldout"]).groupby("strength")[["total", "n_heldout"]].sum()
    mean = (weighted["total"] / weighted["n_heldout"]).sort_index(ascending=False)
    return float(mean.idxmin())


def fit_tuned(
    model,
    pairs: Sequence[Pair],
    template: Template,
    base: FitConfig = FitConfig(),
    grid: Sequence[float] = DEFAULT_GRID,
    k: int = DEFAULT_FOLDS,
    task: str = "",
    progress: bool = True,
) -> tuple[FitResult, pd.DataFrame]:
    """Δ refitted on all ``pairs`` at the cross-validated strength; and the cross-validation table."""
    cv = cross_validate(model, pairs, template, base, grid, k, task, progress)
    s = best_strength(cv)
    return fit(model, pairs, template, replace(base, gamma=s, lam=s), task, progress=progress), cv
