"""Fit Δ at one layer on a handful of examples, all model weights frozen.

    min_Δ  F(Δ) = (1/N) Σ_i L_task(model_Δ(x_i), y_i) + γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂

Many independent fits (other layers, training samples, γ/λ or step sizes)
run as one batch: each row carries its own fit's Δ at its fit's layer, and
since F_k depends on Δ_k alone, minimising Σ_k F_k fits every Δ_k exactly
as a fit of its own would. A single fit is the batch of one.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from headsteer.config import PAIR_LOSSES, FitConfig
from headsteer.display import fit_result_html
from headsteer.errors import ConfigError
from headsteer.fitting.forward import PrefixCachedForward
from headsteer.fitting.forward import ScoredForward
from headsteer.hooks import check_layer
from headsteer.intervention import Intervention, ModelSignature, check_template
from headsteer.fitting.losses import scored_positions, task_loss
from headsteer.fitting.optim import NonFiniteLossError, adam_steps, fista_steps, prox_adam_steps
from headsteer.prompts import Targets, Template, TokenBatch, encode_targets
from headsteer.fitting.regularization import penalty
from headsteer.tasks import Pair
from headsteer.training_record import TrainingRecord

OPTIMIZERS = {"prox_adam": prox_adam_steps, "fista": fista_steps, "adam": adam_steps}
# Rows per forward/backward chunk: bounds the [rows, vocab] logits held at once.
MAX_ROWS = 128

__all__ = ["FitJob", "FitResult", "NonFiniteLossError", "fit", "fit_encoded", "fit_many", "frozen", "optimize"]


@dataclass(frozen=True)
class FitJob:
    """One fit of a batch: its training pairs and config (layer, seed, γ, λ, lr may differ per job)."""

    pairs: tuple[Pair, ...]
    config: FitConfig
    task: str = ""


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

    def _repr_html_(self) -> str:
        return fit_result_html(self)


@contextmanager
def frozen(model) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; the model's own settings restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
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
    max_rows: int = MAX_ROWS,
) -> list[FitResult]:
    """Fit every job in one batched pass; the same results as fitting them one by one."""
    if not jobs:
        raise ValueError("fit_many: no jobs")
    configs = [job.config for job in jobs]
    loss = configs[0].loss
    if loss not in PAIR_LOSSES:
        raise ConfigError(f"loss {loss!r} needs option targets (fit_encoded, as headsteer opinion does); "
                          f"a fit on pairs takes one of {PAIR_LOSSES}")
    pairs = [p for job in jobs for p in job.pairs]
    row_fit = torch.tensor([k for k, job in enumerate(jobs) for _ in job.pairs], dtype=torch.long)
    tokens, targets = encode_targets(model.tokenizer, template, pairs, include_stop=loss == "sequence")
    desc = jobs[0].task or "fit" if len(jobs) == 1 else f"{len(jobs)} fits"
    deltas, histories = optimize(model, tokens, targets, row_fit, configs, forward, progress, max_rows, desc)
    signature = ModelSignature.of(model)
    return [
        FitResult(
            Intervention(delta, job.config.layer, signature, job.task, template.to_dict(), job.config.to_dict(),
                         TrainingRecord.of_pairs(job.pairs)),
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
    row_fit = torch.zeros(len(tokens), dtype=torch.long)
    deltas, histories = optimize(model, tokens, targets, row_fit, [config], forward, progress, desc=task or "fit")
    iv = Intervention(deltas[0], config.layer, ModelSignature.of(model), task, prompt_format or {}, config.to_dict(),
                      TrainingRecord(n_examples=len(tokens)))
    return FitResult(iv, histories[0])


def optimize(
    model,
    tokens: TokenBatch,
    targets: Targets,
    row_fit: Int[Tensor, " rows"],
    configs: Sequence[FitConfig],
    forward: ScoredForward | None = None,
    progress: bool = True,
    max_rows: int = MAX_ROWS,
    desc: str = "fit",
) -> tuple[Float[Tensor, "fits n_heads d_head"], list[pd.DataFrame]]:
    """Minimise Σ_k F_k(Δ_k), fit k owning the rows where ``row_fit == k``; returns Δ's and histories."""
    _check_configs(model, configs, row_fit)
    forward = forward or PrefixCachedForward()
    smooth = _smooth_fn(model, tokens, targets, row_fit, configs, forward, max_rows)
    shape = (len(configs), model.cfg.n_heads, model.cfg.d_head)
    lr, gamma, lam = (torch.tensor([getattr(c, k) for c in configs], dtype=torch.float32) for k in ("lr", "gamma", "lam"))
    steps_fn = OPTIMIZERS[configs[0].optimizer]
    histories: list[list[dict]] = [[] for _ in configs]
    with frozen(model):
        steps = steps_fn(smooth, shape, lr, gamma, lam, configs[0].steps)
        bar = tqdm(steps, total=configs[0].steps + 1, desc=desc, disable=not progress, leave=False)
        for step, (delta, loss) in enumerate(bar):
            for history, row in zip(histories, _history_rows(step, loss, delta, gamma, lam)):
                history.append(row)
            bar.set_postfix(objective=f"{sum(h[-1]['objective'] for h in histories) / len(configs):.4f}")
    return delta.detach().cpu(), [pd.DataFrame(h) for h in histories]


def _smooth_fn(model, tokens, targets, row_fit, configs, forward, max_rows):
    """f(Δ) = [(1/N_k) Σ_{i: fit(i)=k} L_task(i)]_k and ∇f, in chunks of at most ``max_rows`` rows."""
    loss_name = configs[0].loss
    n_scored = scored_positions(loss_name, targets)
    layers = torch.tensor([c.layer for c in configs])
    n_rows = torch.bincount(row_fit, minlength=len(configs)).float()
    chunks = [
        (tokens.select(idx), targets.select(idx), row_fit[idx])
        for idx in torch.arange(len(tokens)).split(max_rows)
    ]

    def smooth(delta: Tensor) -> tuple[Tensor, Tensor]:
        delta = delta.detach().requires_grad_(True)
        losses, grad = torch.zeros(len(configs)), torch.zeros_like(delta)
        for chunk_tokens, chunk_targets, fits in chunks:
            scored = forward(model, layers[fits], chunk_tokens, delta[fits], n_scored)
            per_row = task_loss(loss_name, scored, chunk_targets).cpu()
            per_fit = torch.zeros(len(configs)).index_add(0, fits, per_row / n_rows[fits])
            grad += torch.autograd.grad(per_fit.sum(), delta)[0]
            losses += per_fit.detach()
        return losses, grad

    return smooth


def _check_configs(model, configs: Sequence[FitConfig], row_fit: Tensor) -> None:
    for c in configs:
        check_layer(model, c.layer)
    shared = {(c.loss, c.optimizer, c.steps) for c in configs}
    if len(shared) != 1:
        raise ValueError(f"fits batched together must share loss, optimizer and steps; got {sorted(shared)}")
    counts = torch.bincount(row_fit, minlength=len(configs))
    if (counts == 0).any() or len(counts) != len(configs):
        raise ValueError(f"every fit needs at least one training row; rows per fit: {counts.tolist()}")


def _history_rows(step: int, loss: Tensor, delta: Tensor, gamma: Tensor, lam: Tensor) -> list[dict]:
    reg = penalty(delta, gamma, lam)
    active = (torch.linalg.vector_norm(delta, dim=-1) > 0).sum(-1)
    zeros = (delta == 0).flatten(1).float().mean(1)
    return [
        {"step": step, "objective": float(l + r), "task_loss": float(l), "penalty": float(r),
         "active_heads": int(a), "zeros": float(z)}
        for l, r, a, z in zip(loss, reg, active, zeros)
    ]
