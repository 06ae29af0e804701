"""Choose Δ's task loss by k-fold cross-validation on the training pairs alone, by the answers it makes.

The paper's loss scores only an answer's first token, so a Δ fitted with it
may start the right word and keep going ("Lion is a genus of mammals"); the
``sequence`` loss also teaches every later answer token and the stop string.
Which serves a task better is decided here without reading a test pair: for
each candidate loss ℓ and each fold j of the N training pairs (the folds of
:func:`headsteer.fitting.tuning.folds`), Δ_{ℓ,j} is fitted on the other folds
and fold j's pairs are answered greedily with it. The chosen loss maximises
the pooled exact match over the N pairs,

    ℓ* = argmax_ℓ (1/N) Σ_j Σ_{i ∈ fold j} 1[greedy answer of x_i under Δ_{ℓ,j} = y_i],

ties broken by first-token accuracy and then in the order of ``losses``
(the paper's first-token loss first). Exact match is the criterion because it
is what the choice is for (whole answers); a held-out task loss would favour
whichever loss it is. Every loss's k fits run as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pandas as pd
import torch

from headsteer.config import PAIR_LOSSES, FitConfig, PairLossName
from headsteer.errors import ConfigError
from headsteer.evaluate import DEFAULT_MAX_NEW_TOKENS, evaluate_pairs
from headsteer.fitting.loop import FitJob, FitResult, fit, fit_many
from headsteer.fitting.tuning import DEFAULT_FOLDS, folds
from headsteer.prompts import Template
from headsteer.steering import RowDeltas
from headsteer.tasks import Pair


def cross_validate_losses(
    model,
    pairs: Sequence[Pair],
    template: Template,
    base: FitConfig = FitConfig(),
    losses: Sequence[PairLossName] = PAIR_LOSSES,
    k: int = DEFAULT_FOLDS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    task: str = "",
    progress: bool = False,
) -> pd.DataFrame:
    """One row per (loss, training pair): its fold, and how Δ fitted without that fold answers it.

    Columns: loss, fold, input, target, prediction, first_token, exact_match.
    """
    unknown = [loss for loss in losses if loss not in PAIR_LOSSES]
    if unknown or not losses:
        raise ConfigError(f"losses to compare must be among {PAIR_LOSSES}, got {list(losses)}")
    parts = folds(pairs, k, base.seed)
    frames = []
    for loss in losses:
        jobs = [
            FitJob(tuple(p for i, part in enumerate(parts) if i != j for p in part), replace(base, loss=loss), task)
            for j in range(k)
        ]
        results = fit_many(model, jobs, template, progress=progress)
        # Every fold's pairs answered in one batch, each row with the Δ fitted without its fold.
        heldout = [p for part in parts for p in part]
        fold_of = [j for j, part in enumerate(parts) for _ in part]
        steering = RowDeltas(
            torch.tensor([results[j].intervention.layer for j in fold_of]),
            torch.stack([results[j].intervention.delta for j in fold_of]),
        )
        scores = evaluate_pairs(model, heldout, template, steering, max_new_tokens=max_new_tokens, progress=False)
        frames.append(scores.assign(loss=loss, fold=fold_of))
    columns = ["loss", "fold", "input", "target", "prediction", "first_token", "exact_match"]
    return pd.concat(frames, ignore_index=True)[columns]


def chosen_loss(cv: pd.DataFrame, losses: Sequence[PairLossName] = PAIR_LOSSES) -> PairLossName:
    """The loss with the highest cross-validated exact match (then first-token accuracy, then ``losses`` order)."""
    exact = cv.groupby("loss")["exact_match"].mean().to_dict()
    first = cv.groupby("loss")["first_token"].mean().to_dict()

    def rank(loss: PairLossName) -> tuple[float, float]:
        return -exact[loss], -first[loss]

    return min(losses, key=rank)  # min keeps the first of equals: ``losses`` order breaks ties


def fit_with_chosen_loss(
    model,
    pairs: Sequence[Pair],
    template: Template,
    base: FitConfig = FitConfig(),
    losses: Sequence[PairLossName] = PAIR_LOSSES,
    k: int = DEFAULT_FOLDS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    task: str = "",
    progress: bool = False,
) -> tuple[FitResult, pd.DataFrame]:
    """Δ refitted on all ``pairs`` with the cross-validated loss; and the cross-validation rows."""
    cv = cross_validate_losses(model, pairs, template, base, losses, k, max_new_tokens, task, progress)
    return fit(model, pairs, template, replace(base, loss=chosen_loss(cv, losses)), task, progress=progress), cv
