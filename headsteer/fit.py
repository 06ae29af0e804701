"""Fit Δ at one layer on a handful of examples, all model weights frozen.

    min_Δ  F(Δ) = (1/N) Σ_i L_task(model_Δ(x_i), y_i) + γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂

``proximal``: accelerated proximal gradient (FISTA with gradient-based
restart) on the smooth part, then the closed-form sparse-group-lasso prox, so
unused components and heads are exactly zero. ``adam``: Adam on the
subgradient of the whole F (the paper's way; zeros only by accident).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from headsteer.config import FitConfig
from headsteer.fast_forward import PrefixCachedForward
from headsteer.forward import ScoredForward
from headsteer.hooks import check_layer
from headsteer.intervention import Intervention, ModelSignature
from headsteer.losses import Targets, scored_positions, task_loss
from headsteer.prompts import Template, TokenBatch, encode_targets
from headsteer.regularization import penalty, prox_sparse_group_lasso
from headsteer.tasks import Pair


class NonFiniteLossError(FloatingPointError):
    """The task loss or its gradient became NaN or infinite during a fit."""


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
    ``headsteer.forward.naive_scored_logits`` for the full-forward reference.
    """
    check_layer(model, config.layer)
    tokens, targets = encode_targets(model.tokenizer, template, pairs, include_stop=config.loss == "sequence")
    delta, history = fit_delta(model, tokens, targets, config, forward, progress, desc=task or "fit")
    iv = Intervention(
        delta=delta,
        layer=config.layer,
        model=ModelSignature.of(model),
        task=task,
        template=template.to_dict(),
        fit_config=config.to_dict(),
    )
    return FitResult(iv, history)


def fit_delta(
    model,
    tokens: TokenBatch,
    targets: Targets,
    config: FitConfig,
    forward: ScoredForward | None = None,
    progress: bool = True,
    desc: str = "fit",
) -> tuple[Float[Tensor, "n_heads d_head"], pd.DataFrame]:
    """The optimisation loop over pre-tokenised data; returns Δ (on CPU) and the history."""
    check_layer(model, config.layer)
    forward = forward or PrefixCachedForward()
    torch.manual_seed(config.seed)
    shape = (model.cfg.n_heads, model.cfg.d_head)
    n_scored = scored_positions(config.loss, targets)

    def smooth(delta: Tensor) -> tuple[Tensor, Tensor]:
        """Mean task loss and its gradient at Δ."""
        delta = delta.detach().requires_grad_(True)
        loss = task_loss(config.loss, forward(model, config.layer, tokens, delta, n_scored), targets).mean()
        (grad,) = torch.autograd.grad(loss, delta)
        return loss.detach(), grad

    step_fn = _proximal_steps if config.optimizer == "proximal" else _adam_steps
    rows = []
    with frozen(model):
        bar = tqdm(step_fn(smooth, shape, config), total=config.steps + 1, desc=desc, disable=not progress, leave=False)
        for step, (delta, loss) in enumerate(bar):
            row = _history_row(step, loss, delta, config)
            rows.append(row)
            bar.set_postfix(objective=f"{row['objective']:.4f}", heads=row["active_heads"])
    return delta.detach().cpu(), pd.DataFrame(rows)


def _history_row(step: int, loss: Tensor, delta: Tensor, config: FitConfig) -> dict:
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"task loss is {value} at step {step} (layer {config.layer}, lr {config.lr}); "
            "lower lr, or check the targets and the model's dtype"
        )
    reg = float(penalty(delta, config.gamma, config.lam))
    norms = torch.linalg.vector_norm(delta, dim=-1)
    return {
        "step": step,
        "objective": value + reg,
        "task_loss": value,
        "penalty": reg,
        "active_heads": int((norms > 0).sum()),
        "zeros": float((delta == 0).float().mean()),
    }


def _check_grad(grad: Tensor, step: int) -> None:
    if not torch.isfinite(grad).all():
        raise NonFiniteLossError(f"gradient of the task loss has NaN/inf entries at step {step}")


def _proximal_steps(smooth, shape, config: FitConfig):
    """FISTA: y = x_k + β(x_k − x_{k−1}); x_{k+1} = prox_{ηR}(y − η∇f(y)).

    Momentum restarts when (y − x_{k+1})·(x_{k+1} − x_k) > 0. Yields (y_k, f(y_k))
    for each step, then the final prox point x with f(x): that one is the fitted Δ.
    """
    x = torch.zeros(shape)
    x_prev, t = x.clone(), 1.0
    for step in range(config.steps):
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = x + ((t - 1) / t_next) * (x - x_prev)
        loss, grad = smooth(y)
        _check_grad(grad, step)
        x_new = prox_sparse_group_lasso(y - config.lr * grad, config.lr, config.gamma, config.lam)
        if torch.sum((y - x_new) * (x_new - x)) > 0:
            t_next = 1.0
        x_prev, x, t = x, x_new, t_next
        yield y, loss
    yield x, smooth(x)[0]


def _adam_steps(smooth, shape, config: FitConfig):
    """Adam on the subgradient of F = f + γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂.

    Yields (Δ_k, f(Δ_k)) before each step, then the final Δ.
    """
    delta = torch.zeros(shape, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=config.lr)
    for step in range(config.steps):
        loss, grad = smooth(delta)
        _check_grad(grad, step)
        yield delta.detach().clone(), loss
        reg = penalty(delta, config.gamma, config.lam)
        (reg_grad,) = torch.autograd.grad(reg, delta)
        delta.grad = grad + reg_grad
        opt.step()
    yield delta.detach(), smooth(delta)[0]
