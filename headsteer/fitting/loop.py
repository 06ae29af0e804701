"""Fit Δ at one layer on a handful of examples, all model weights frozen.

    min_Δ  F(Δ) = (1/N) Σ_i L_task(model_Δ(x_i), y_i) + γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂

Many independent fits (other layers, training samples, γ/λ or step sizes)
run as one batch: each row carries its own fit's Δ at its fit's layer, and
since F_k depends on Δ_k alone, minimising Σ_k F_k fits every Δ_k exactly
as a fit of its own would. A single fit is the batch of one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from headsteer.backends import model_kind
from headsteer.config import PAIR_LOSSES, FitConfig
from headsteer.errors import ConfigError, NonFiniteLossError
from headsteer.fitting.forward import PrefixCachedForward, ScoredForward
from headsteer.fitting.losses import scored_positions, task_loss
from headsteer.fitting.optim import UPDATE_RULES
from headsteer.fitting.regularization import penalty
from headsteer.hooks import check_layer
from headsteer.intervention import Intervention, check_template
from headsteer.models import ModelSignature
from headsteer.prompts import Targets, Template, TokenBatch, encode_targets
from headsteer.tasks import Pair
from headsteer.training_record import TrainingRecord

# Rows per forward/backward chunk of the naive forward: bounds the [rows, pos, vocab] logits held at once.
MAX_ROWS = 128
# Scored positions per chunk of the prefix-cached forward, which holds no [rows, vocab] logits (the NLL
# streams the vocabulary): this bounds the suffix's activations kept for the backward. One big chunk
# instead of several small ones keeps the products large (a sweep seed's 180 fits of 10 rows, one chunk).
MAX_SCORED_POSITIONS = 1024

__all__ = ["FitJob", "FitResult", "NonFiniteLossError", "fit", "fit_encoded", "fit_many", "frozen", "optimize"]


@dataclass(frozen=True, eq=False)
class FitJob:
    """One fit of a batch: its training pairs and config (layer, seed, γ, λ, lr may differ per job).

    ``init`` is where the fit starts (a warm start, e.g. the previous strength's Δ along a
    regularization path); None starts at Δ = 0, as every fit of the paper does.
    """

    pairs: tuple[Pair, ...]
    config: FitConfig
    task: str = ""
    init: Float[Tensor, "n_heads d_head"] | None = None


@dataclass(frozen=True)
class FitResult:
    intervention: Intervention
    # One row per gradient step (the point the gradient was taken at), plus a
    # last row for the returned Δ: objective, task_loss, penalty, active_heads, zeros.
    history: pd.DataFrame

    @property
    def config(self) -> FitConfig:
        return FitConfig.from_dict(self.intervention.fit_config)

    def head_norms(self) -> pd.DataFrame:
        norms = self.intervention.head_norms().tolist()
        return pd.DataFrame({"layer": self.intervention.layer, "head": range(len(norms)), "norm": norms})


@contextmanager
def frozen(model) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; the model's own settings restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    # A model in eval mode already (as loaded) is left alone: switching walks every module, twice (about 60 ms
    # a fit on a TransformerBridge of Gemma 3 270M, 1,678 modules).
    switch = any(m.training for m in model.modules())
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        if switch:
            model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        if switch:
            model.train(was_training)


def fit(
    model,
    pairs: Sequence[Pair],
    template: Template,
    config: FitConfig = FitConfig(),
    task: str = "",
    forward: ScoredForward | None = None,
    progress: bool = True,
) -> FitResult:
    """Fit an intervention on ``pairs`` rendered with ``template``.

    ``forward`` defaults to the prefix-cached path; pass
    ``headsteer.fitting.forward.naive_scored_logits`` for the full-forward reference.
    """
    return fit_many(model, [FitJob(tuple(pairs), config, task)], template, forward, progress)[0]


def fit_many(
    model,
    jobs: Sequence[FitJob],
    template: Template,
    forward: ScoredForward | None = None,
    progress: bool = True,
    max_rows: int | None = None,
) -> list[FitResult]:
    """Fit every job in one batched pass; the same results as fitting them one by one."""
    if not jobs:
        raise ValueError("fit_many: no jobs")
    model_kind(model)  # a model headsteer cannot run is refused before any work
    configs = [job.config for job in jobs]
    loss = configs[0].loss
    if loss not in PAIR_LOSSES:
        raise ConfigError(
            f"loss {loss!r} needs option targets (fit_encoded, as headsteer opinion does); "
            f"a fit on pairs takes one of {PAIR_LOSSES}"
        )
    pairs = [p for job in jobs for p in job.pairs]
    fit_of_row = torch.tensor([k for k, job in enumerate(jobs) for _ in job.pairs], dtype=torch.long)
    tokens, targets = encode_targets(model.tokenizer, template, pairs, include_stop=loss == "sequence")
    desc = jobs[0].task or "fit" if len(jobs) == 1 else f"{len(jobs)} fits"
    init = None
    if any(job.init is not None for job in jobs):
        shape = (model.cfg.n_heads, model.cfg.d_head)
        init = torch.stack([torch.zeros(shape) if job.init is None else job.init.detach().cpu() for job in jobs])
    deltas, histories = optimize(
        model, tokens, targets, fit_of_row, configs, forward, progress, max_rows, desc, init=init
    )
    signature = ModelSignature.of(model)
    return [
        FitResult(
            Intervention(
                delta,
                job.config.layer,
                signature,
                job.task,
                template.to_dict(),
                job.config.to_dict(),
                TrainingRecord.of_pairs(job.pairs),
            ),
            history,
        )
        for job, delta, history in zip(jobs, deltas, histories)
    ]


def fit_encoded(
    model,
    tokens: TokenBatch,
    targets: Targets,
    config: FitConfig,
    task: str = "",
    prompt_format: dict | None = None,
    forward: ScoredForward | None = None,
    progress: bool = True,
) -> FitResult:
    """One fit over pre-tokenised data (e.g. option prompts with ``OptionTargets``).

    ``prompt_format`` records how the prompts were made (stored in the
    intervention where a pair-based fit stores its template). The training
    record holds only the number of prompts: their inputs are not known here.
    """
    check_template(prompt_format or {})  # before the fit, not after it
    model_kind(model)
    fit_of_row = torch.zeros(len(tokens), dtype=torch.long)
    deltas, histories = optimize(model, tokens, targets, fit_of_row, [config], forward, progress, desc=task or "fit")
    iv = Intervention(
        deltas[0],
        config.layer,
        ModelSignature.of(model),
        task,
        prompt_format or {},
        config.to_dict(),
        TrainingRecord(n_examples=len(tokens)),
    )
    return FitResult(iv, histories[0])


def optimize(
    model,
    tokens: TokenBatch,
    targets: Targets,
    fit_of_row: Int[Tensor, " rows"],
    configs: Sequence[FitConfig],
    forward: ScoredForward | None = None,
    progress: bool = True,
    max_rows: int | None = None,
    desc: str = "fit",
    init: Float[Tensor, "fits n_heads d_head"] | None = None,
) -> tuple[Float[Tensor, "fits n_heads d_head"], list[pd.DataFrame]]:
    """The fitting loop: minimise Σ_k F_k(Δ_k), fit k owning the training rows where ``fit_of_row == k``.

        F_k(Δ_k) = f_k(Δ_k) + γ_k‖Δ_k‖₁ + λ_k Σ_h ‖Δ_{k,h}‖₂,   f_k = (1/N_k) Σ_{i: fit_of_row[i] = k} L_task(i)

    F_k depends on Δ_k alone, so one loop over the stacked Δ ``[K, n_heads, d_head]``
    fits every Δ_k exactly as a fit of its own would. Each Δ_k starts at ``init[k]``
    (zeros when None). Rows run in chunks of ``max_rows`` (None: as many as
    :data:`MAX_SCORED_POSITIONS` allows the prefix-cached forward, :data:`MAX_ROWS`
    any other). Returns the fitted Δ's and, per fit, one history row per gradient
    step plus one for the result.
    """
    _check_configs(model, configs, fit_of_row)
    # The prefix-cached forward (default) computes the Δ-independent prefix of every row once,
    # on its first call; every later step runs only the positions Δ can change.
    forward = forward or PrefixCachedForward()
    n_fits, steps, loss_name = len(configs), configs[0].steps, configs[0].loss
    n_scored = scored_positions(loss_name, targets)  # 1 for first_token/option_kl, the answer's length for sequence
    if max_rows is None:
        max_rows = max(1, MAX_SCORED_POSITIONS // n_scored) if isinstance(forward, PrefixCachedForward) else MAX_ROWS
    # Each fit's hyper-parameters as a [K] tensor: one loop serves fits with different lr, γ, λ and layers.
    lr, gamma, lam = (
        torch.tensor([getattr(c, k) for c in configs], dtype=torch.float32) for k in ("lr", "gamma", "lam")
    )
    layer_of_fit = torch.tensor([c.layer for c in configs])
    rows_of_fit = torch.bincount(fit_of_row, minlength=n_fits).float()
    # Rows go through the model in chunks of at most max_rows, which bounds the memory of one
    # forward/backward; a chunk may hold rows of several fits, each row with its own Δ and layer
    # (the prefix-cached forward runs each row from its own layer on).
    chunks = [
        (tokens.select(rows), targets.select(rows), fit_of_row[rows])
        for rows in torch.arange(len(tokens)).split(max_rows)
    ]

    def smooth_part(delta: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
        """f(Δ) per fit, and ∇f (summed over chunks) when ``with_grad``."""
        delta = delta.detach().requires_grad_(with_grad)
        losses, grad = torch.zeros(n_fits), torch.zeros_like(delta) if with_grad else None
        for chunk_tokens, chunk_targets, fits in chunks:
            with torch.set_grad_enabled(with_grad):
                scored = forward(model, layer_of_fit[fits], chunk_tokens, delta[fits], n_scored)
                per_row = task_loss(loss_name, scored, chunk_targets).cpu()
                # Row i adds L_i / N_k to its fit's loss: each f_k is a mean over its own rows.
                per_fit = torch.zeros(n_fits).index_add(0, fits, per_row / rows_of_fit[fits])
            if grad is not None:
                grad += torch.autograd.grad(per_fit.sum(), delta)[0]
            losses += per_fit.detach()
        return losses, grad

    shape = (n_fits, model.cfg.n_heads, model.cfg.d_head)
    rule = UPDATE_RULES[configs[0].optimizer](shape, lr, gamma, lam, steps, init)
    histories: list[list[dict]] = [[] for _ in configs]
    with frozen(model):  # the model's weights never move, and need no gradients
        bar = tqdm(range(steps + 1), desc=desc, disable=not progress, leave=False)
        for step in bar:
            # Steps 0..T-1 take the gradient where the rule asks; the extra last pass scores the fitted Δ's,
            # whose loss (not gradient) goes into the last history row.
            delta = rule.point() if step < steps else rule.result()
            losses, grad = smooth_part(delta, with_grad=step < steps)
            _check_finite(losses, grad, step)  # a NaN would otherwise spread silently through every later step
            for history, row in zip(histories, _history_rows(step, losses, delta, gamma, lam)):
                history.append(row)
            bar.set_postfix(objective=f"{sum(h[-1]['objective'] for h in histories) / n_fits:.4f}")
            if grad is not None:
                rule.update(grad, step)
    return delta.detach().cpu(), [pd.DataFrame(h) for h in histories]


def _check_configs(model, configs: Sequence[FitConfig], fit_of_row: Tensor) -> None:
    for c in configs:
        check_layer(model, c.layer)
    shared = {(c.loss, c.optimizer, c.steps) for c in configs}
    if len(shared) != 1:
        raise ValueError(f"fits batched together must share loss, optimizer and steps; got {sorted(shared)}")
    counts = torch.bincount(fit_of_row, minlength=len(configs))
    if (counts == 0).any() or len(counts) != len(configs):
        raise ValueError(f"every fit needs at least one training row; rows per fit: {counts.tolist()}")


def _check_finite(losses: Tensor, grad: Tensor | None, step: int) -> None:
    bad = ~torch.isfinite(losses)
    if grad is not None:
        bad |= ~torch.isfinite(grad).flatten(1).all(1)
    if bad.any():
        fits = torch.nonzero(bad).flatten().tolist()
        raise NonFiniteLossError(
            f"non-finite task loss or gradient at step {step} in fit(s) {fits} (losses {losses.tolist()}); "
            "lower lr, or check the targets and the model's dtype"
        )


def _history_rows(step: int, losses: Tensor, delta: Tensor, gamma: Tensor, lam: Tensor) -> list[dict]:
    """Per fit: objective F = f + R, task loss f, penalty R, heads with Δ_h ≠ 0, share of exact zeros."""
    reg = penalty(delta, gamma, lam)
    active = (torch.linalg.vector_norm(delta, dim=-1) > 0).sum(-1)
    zeros = (delta == 0).flatten(1).float().mean(1)
    return [
        {
            "step": step,
            "objective": float(f + r),
            "task_loss": float(f),
            "penalty": float(r),
            "active_heads": int(n_active),
            "zeros": float(z),
        }
        for f, r, n_active, z in zip(losses, reg, active, zeros)
    ]
