"""The sparse-group-lasso penalty on Δ and its closed-form proximal operator.

Δ has shape ``[..., n_heads, d_head]``; a group is one head's vector Δ_h.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def penalty(
    delta: Float[Tensor, "*fits n_heads d_head"], gamma: float | Tensor, lam: float | Tensor
) -> Float[Tensor, " *fits"]:
    """R(Δ) = γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂, one value per leading index (γ, λ may be one per fit)."""
    l1 = delta.abs().sum(dim=(-2, -1))
    group = torch.linalg.vector_norm(delta, dim=-1).sum(-1)
    return gamma * l1 + lam * group


def prox_sparse_group_lasso(
    delta: Float[Tensor, "*fits n_heads d_head"],
    step: float | Tensor,
    gamma: float | Tensor,
    lam: float | Tensor,
) -> Float[Tensor, "*fits n_heads d_head"]:
    """prox_{ηR}(Δ) = argmin_X ½‖X − Δ‖² + η R(X), in closed form:

        U     = sign(Δ) · max(|Δ| − ηγ, 0)                (soft-threshold)
        X_h   = U_h · max(0, 1 − ηλ / ‖U_h‖₂)              (group shrink; 0 if U_h = 0)

    Entries below ηγ and heads whose thresholded norm is below ηλ become
    exactly zero. η, γ, λ may be tensors broadcasting against Δ (one per fit).
    """
    u = torch.sign(delta) * (delta.abs() - step * gamma).clamp_min(0.0)
    norms = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    scale = (1.0 - step * lam / norms.clamp_min(torch.finfo(u.dtype).tiny)).clamp_min(0.0)
    return u * scale


def prox_sparse_group_lasso_scaled(
    delta: Float[Tensor, "*fits n_heads d_head"],
    step: float | Tensor,
    gamma: float | Tensor,
    lam: float | Tensor,
    metric: Float[Tensor, "*fits n_heads d_head"],
    newton_steps: int = 30,
) -> Float[Tensor, "*fits n_heads d_head"]:
    """The prox in the diagonal metric D > 0 (an Adam-style preconditioner):

        X = argmin_X  Σ_i D_i (X_i − Δ_i)² / 2η + γ‖X‖₁ + λ Σ_h ‖X_h‖₂

        U_i = sign(Δ_i) · max(|Δ_i| − ηγ / D_i, 0)           (soft-threshold, per-entry threshold)
        X_h = 0                                  if ‖D_h U_h‖₂ ≤ ηλ
        X_hi = D_i U_i r / (D_i r + ηλ)          else, r = ‖X_h‖₂ the root of Σ_i (D_i U_i / (D_i r + ηλ))² = 1

    The root is found by Newton's method from the lower bound (‖DU‖ − ηλ)/max D,
    which converges monotonically (the left side is convex and decreasing in r).
    With D = 1 this is :func:`prox_sparse_group_lasso`.
    """
    u = torch.sign(delta) * (delta.abs() - step * gamma / metric).clamp_min(0.0)
    a, c = metric * u, torch.as_tensor(step * lam, dtype=u.dtype).expand_as(u[..., :1])
    a_norm = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    live = a_norm > c
    r = ((a_norm - c) / metric.amax(-1, keepdim=True)).clamp_min(0.0)
    for _ in range(newton_steps):
        denom = metric * r + c
        psi = ((a / denom) ** 2).sum(-1, keepdim=True) - 1.0
        dpsi = -2.0 * (a * a * metric / denom**3).sum(-1, keepdim=True)
        r = torch.where(live, r - psi / dpsi.clamp_max(-torch.finfo(u.dtype).tiny), r)
    x = a * r / (metric * r + c).clamp_min(torch.finfo(u.dtype).tiny)
    return torch.where(live, x, torch.zeros_like(x))
