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
