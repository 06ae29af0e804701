"""Optimisers over K independent Δ's at once, each with its own step size and penalty weights.

Δ is ``[K, n_heads, d_head]``; ``lr``, ``gamma`` and ``lam`` are ``[K]``.
``smooth(Δ)`` returns the K task losses and their gradient. Both generators
yield ``(Δ_k, f(Δ_k))`` for the point each gradient was taken at, then the
final Δ with its loss: that last one is the fit.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from headsteer.errors import NonFiniteLossError
from headsteer.fitting.regularization import penalty, prox_sparse_group_lasso, prox_sparse_group_lasso_scaled

Smooth = Callable[[Tensor], tuple[Float[Tensor, " fits"], Float[Tensor, "fits n_heads d_head"]]]
Steps = Iterator[tuple[Float[Tensor, "fits n_heads d_head"], Float[Tensor, " fits"]]]


def _check(loss: Tensor, grad: Tensor, step: int) -> None:
    bad = ~torch.isfinite(loss) | ~torch.isfinite(grad).flatten(1).all(1)
    if bad.any():
        fits = torch.nonzero(bad).flatten().tolist()
        raise NonFiniteLossError(
            f"non-finite task loss or gradient at step {step} in fit(s) {fits} (losses {loss.tolist()}); "
            "lower lr, or check the targets and the model's dtype"
        )


def _moments(m: Tensor, v: Tensor, g: Tensor, step: int, betas: tuple[float, float]):
    """Adam's moments after gradient ``g`` at ``step`` (0-based), and their bias-corrected values."""
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    return m, v, m / (1 - betas[0] ** (step + 1)), v / (1 - betas[1] ** (step + 1))


def _col(x: Tensor) -> Tensor:
    return x[:, None, None]


def fista_steps(smooth: Smooth, shape: tuple[int, ...], lr: Tensor, gamma: Tensor, lam: Tensor, steps: int) -> Steps:
    """FISTA per fit: y = x_k + β_k(x_k − x_{k−1});  x_{k+1} = prox_{ηR}(y − η∇f(y)),

    β_k = (t_k − 1)/t_{k+1}, t_{k+1} = (1 + √(1 + 4t_k²))/2, and a fit's momentum
    restarts (t = 1) when (y − x_{k+1})·(x_{k+1} − x_k) > 0. The prox is the
    closed-form sparse-group-lasso operator, so zeros are exact.
    """
    x = torch.zeros(shape)
    x_prev, t = x.clone(), torch.ones(shape[0])
    for step in range(steps):
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        y = x + _col((t - 1) / t_next) * (x - x_prev)
        loss, grad = smooth(y)
        _check(loss, grad, step)
        yield y, loss
        x_new = prox_sparse_group_lasso(y - _col(lr) * grad, _col(lr), _col(gamma), _col(lam))
        restart = ((y - x_new) * (x_new - x)).flatten(1).sum(1) > 0
        t_next = torch.where(restart, torch.ones_like(t_next), t_next)
        x_prev, x, t = x, x_new, t_next
    yield x, smooth(x)[0]


def adam_steps(
    smooth: Smooth, shape: tuple[int, ...], lr: Tensor, gamma: Tensor, lam: Tensor, steps: int,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
) -> Steps:
    """Adam on a subgradient g of F = f + γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂ (0 taken at 0):

        m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  Δ ← Δ − η m̂ / (√v̂ + ε)
    """
    delta = torch.zeros(shape)
    m, v = torch.zeros(shape), torch.zeros(shape)
    for step in range(steps):
        loss, grad = smooth(delta)
        _check(loss, grad, step)
        yield delta, loss
        d = delta.detach().requires_grad_(True)
        (reg_grad,) = torch.autograd.grad(penalty(d, gamma, lam).sum(), d)
        m, v, m_hat, v_hat = _moments(m, v, grad + reg_grad, step, betas)
        delta = delta - _col(lr) * m_hat / (v_hat.sqrt() + eps)
    yield delta, smooth(delta)[0]


def prox_adam_steps(
    smooth: Smooth, shape: tuple[int, ...], lr: Tensor, gamma: Tensor, lam: Tensor, steps: int,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
) -> Steps:
    """Adam's moments on the smooth part, then the prox of R in Adam's metric (ProxGen):

        m ← β₁m + (1−β₁)∇f;  v ← β₂v + (1−β₂)(∇f)²;  D = √v̂ + ε
        Δ ← argmin_X  Σ_i D_i (X_i − Δ_i + η_t m̂_i / D_i)² / 2η_t + γ‖X‖₁ + λ Σ_h ‖X_h‖₂

    with η_t = η (0.1 + 0.9 (1 + cos(π t / T)) / 2) decaying over the T steps:
    Adam's per-coordinate step sizes, proximal gradient's fixed points
    (0 ∈ ∇f + ∂R when m̂ = ∇f) and exact zeros.
    """
    delta = torch.zeros(shape)
    m, v = torch.zeros(shape), torch.zeros(shape)
    for step in range(steps):
        loss, grad = smooth(delta)
        _check(loss, grad, step)
        yield delta, loss
        m, v, m_hat, v_hat = _moments(m, v, grad, step, betas)
        metric = v_hat.sqrt() + eps
        eta = _col(lr) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        delta = prox_sparse_group_lasso_scaled(delta - eta * m_hat / metric, eta, _col(gamma), _col(lam), metric)
    yield delta, smooth(delta)[0]
