"""Update rules for K independent Δ's at once, each with its own step size and penalty weights.

Δ is ``[K, n_heads, d_head]``; ``lr``, ``gamma`` and ``lam`` are ``[K]``. A
rule holds its state (Δ, moments, momentum) and is driven by the fitting loop
(:func:`headsteer.fitting.loop.optimize`), which asks it for the point where
the next gradient is taken (:meth:`UpdateRule.point`), hands it the smooth
part's gradient there (:meth:`UpdateRule.update`), and finally takes the
fitted Δ (:meth:`UpdateRule.result`). Every rule starts at ``init`` (zeros when None: a
warm start, e.g. from the previous strength of a regularization path, passes the
previous Δ's). The sparse-group-lasso penalty
R(Δ) = γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂ is each rule's own business: the proximal rules
apply its prox, Adam adds its subgradient.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from headsteer.config import OptimizerName
from headsteer.fitting.regularization import penalty, prox_sparse_group_lasso, prox_sparse_group_lasso_scaled

Deltas = Float[Tensor, "fits n_heads d_head"]
PerFit = Float[Tensor, " fits"]
BETAS = (0.9, 0.999)  # Adam's moment decay rates
EPS = 1e-8  # Adam's denominator guard


@runtime_checkable
class UpdateRule(Protocol):
    def point(self) -> Deltas:
        """Where the next gradient of the smooth part is taken."""
        ...

    def update(self, grad: Deltas, step: int) -> None:
        """Take step ``step`` (0-based) given the gradient at :meth:`point`."""
        ...

    def result(self) -> Deltas:
        """The fitted Δ's."""
        ...


def _start(shape: tuple[int, ...], init: Deltas | None) -> Deltas:
    """Where a rule starts: zeros, or a copy of ``init`` (the caller's tensor is never updated in place)."""
    if init is None:
        return torch.zeros(shape)
    if tuple(init.shape) != tuple(shape):
        raise ValueError(f"init has shape {tuple(init.shape)}, the fits need {tuple(shape)}")
    return init.detach().to(torch.float32).clone()


def _per_fit(x: PerFit) -> Float[Tensor, "fits 1 1"]:
    """A per-fit value ``[K]`` broadcast against Δ ``[K, n_heads, d_head]``."""
    return x[:, None, None]


def _adam_moments(m: Deltas, v: Deltas, g: Deltas, step: int) -> tuple[Deltas, Deltas, Deltas, Deltas]:
    """Adam's moments after gradient ``g`` at ``step`` (0-based), and their bias-corrected values."""
    m = BETAS[0] * m + (1 - BETAS[0]) * g
    v = BETAS[1] * v + (1 - BETAS[1]) * g * g
    return m, v, m / (1 - BETAS[0] ** (step + 1)), v / (1 - BETAS[1] ** (step + 1))


class ProxAdam:
    """Adam's moments on the smooth part f, then the prox of R in Adam's metric (ProxGen):

        m ← β₁m + (1−β₁)∇f;  v ← β₂v + (1−β₂)(∇f)²;  D = √v̂ + ε
        Δ ← argmin_X  Σ_i D_i (X_i − Δ_i + η_t m̂_i / D_i)² / 2η_t + γ‖X‖₁ + λ Σ_h ‖X_h‖₂

    with η_t = η (0.1 + 0.9 (1 + cos(π t / T)) / 2) decaying over the T steps:
    Adam's per-coordinate step sizes, proximal gradient's fixed points
    (0 ∈ ∇f + ∂R when m̂ = ∇f) and exact zeros.
    """

    def __init__(
        self, shape: tuple[int, ...], lr: PerFit, gamma: PerFit, lam: PerFit, steps: int, init: Deltas | None = None
    ) -> None:
        self.delta, self.m, self.v = _start(shape, init), torch.zeros(shape), torch.zeros(shape)
        self.lr, self.gamma, self.lam, self.steps = lr, gamma, lam, steps

    def point(self) -> Deltas:
        return self.delta

    def update(self, grad: Deltas, step: int) -> None:
        self.m, self.v, m_hat, v_hat = _adam_moments(self.m, self.v, grad, step)
        metric = v_hat.sqrt() + EPS
        eta = _per_fit(self.lr) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / self.steps)))
        self.delta = prox_sparse_group_lasso_scaled(
            self.delta - eta * m_hat / metric, eta, _per_fit(self.gamma), _per_fit(self.lam), metric
        )

    def result(self) -> Deltas:
        return self.delta


class Fista:
    """FISTA per fit: y = x_k + β_k(x_k − x_{k−1});  x_{k+1} = prox_{ηR}(y − η∇f(y)),

    β_k = (t_k − 1)/t_{k+1}, t_{k+1} = (1 + √(1 + 4t_k²))/2, and a fit's momentum
    restarts (t = 1) when (y − x_{k+1})·(x_{k+1} − x_k) > 0. The prox is the
    closed-form sparse-group-lasso operator, so zeros are exact. The gradient
    is taken at the extrapolated point y, not at x.
    """

    def __init__(
        self, shape: tuple[int, ...], lr: PerFit, gamma: PerFit, lam: PerFit, steps: int, init: Deltas | None = None
    ) -> None:
        self.x = _start(shape, init)
        self.x_prev, self.t = self.x.clone(), torch.ones(shape[0])
        self.lr, self.gamma, self.lam = lr, gamma, lam
        self.y, self.t_next = self.x, self.t

    def point(self) -> Deltas:
        self.t_next = (1 + torch.sqrt(1 + 4 * self.t * self.t)) / 2
        self.y = self.x + _per_fit((self.t - 1) / self.t_next) * (self.x - self.x_prev)
        return self.y

    def update(self, grad: Deltas, step: int) -> None:
        lr = _per_fit(self.lr)
        x_new = prox_sparse_group_lasso(self.y - lr * grad, lr, _per_fit(self.gamma), _per_fit(self.lam))
        restart = ((self.y - x_new) * (x_new - self.x)).flatten(1).sum(1) > 0
        self.t = torch.where(restart, torch.ones_like(self.t_next), self.t_next)
        self.x_prev, self.x = self.x, x_new

    def result(self) -> Deltas:
        return self.x


class Adam:
    """Adam on a subgradient g of F = f + γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂ (0 taken at 0), the paper's way:

        m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  Δ ← Δ − η m̂ / (√v̂ + ε)

    No exact zeros: a coordinate only oscillates around 0.
    """

    def __init__(
        self, shape: tuple[int, ...], lr: PerFit, gamma: PerFit, lam: PerFit, steps: int, init: Deltas | None = None
    ) -> None:
        self.delta, self.m, self.v = _start(shape, init), torch.zeros(shape), torch.zeros(shape)
        self.lr, self.gamma, self.lam = lr, gamma, lam

    def point(self) -> Deltas:
        return self.delta

    def update(self, grad: Deltas, step: int) -> None:
        at = self.delta.detach().requires_grad_(True)
        (penalty_grad,) = torch.autograd.grad(penalty(at, self.gamma, self.lam).sum(), at)
        self.m, self.v, m_hat, v_hat = _adam_moments(self.m, self.v, grad + penalty_grad, step)
        self.delta = self.delta - _per_fit(self.lr) * m_hat / (v_hat.sqrt() + EPS)

    def result(self) -> Deltas:
        return self.delta


UPDATE_RULES: dict[OptimizerName, type[ProxAdam] | type[Fista] | type[Adam]] = {
    "prox_adam": ProxAdam,
    "fista": Fista,
    "adam": Adam,
}
