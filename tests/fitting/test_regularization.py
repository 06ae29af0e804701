"""The sparse-group-lasso prox: closed form, exact zeros, and optimality."""

import math

import torch

from headsteer.fitting.regularization import penalty, prox_sparse_group_lasso, prox_sparse_group_lasso_scaled


def reference_prox(delta, step, gamma, lam):
    """Element-by-element, head-by-head, written out independently."""
    out = torch.zeros_like(delta)
    for h in range(delta.shape[0]):
        u = [math.copysign(max(abs(v) - step * gamma, 0.0), v) for v in delta[h].tolist()]
        norm = math.sqrt(sum(v * v for v in u))
        scale = max(0.0, 1 - step * lam / norm) if norm > 0 else 0.0
        out[h] = torch.tensor([v * scale for v in u])
    return out


def test_prox_matches_closed_form_and_gives_exact_zeros():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(4, 16, generator=g, dtype=torch.float64)
    delta[1] *= 0.05  # a weak head: should vanish entirely
    out = prox_sparse_group_lasso(delta, step=0.5, gamma=0.2, lam=0.3)
    torch.testing.assert_close(out, reference_prox(delta, 0.5, 0.2, 0.3))
    assert out[1].eq(0).all(), "the weak head is exactly zero"
    assert (out == 0).sum() > (delta.abs() < 0.1).sum() - 1  # small entries are exactly zero
    assert out[0].ne(0).any()


def test_prox_minimises_its_objective():
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(3, 8, generator=g, dtype=torch.float64)
    step, gamma, lam = 0.3, 0.4, 0.5

    def objective(x):
        return 0.5 * (x - delta).pow(2).sum() + step * penalty(x, gamma, lam)

    best = prox_sparse_group_lasso(delta, step, gamma, lam)
    for _ in range(200):
        other = best + 0.05 * torch.randn(best.shape, generator=g, dtype=torch.float64)
        assert objective(best) <= objective(other) + 1e-12


def test_penalty_value_and_zero_step_is_identity():
    delta = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    assert math.isclose(penalty(delta, gamma=0.1, lam=1.0).item(), 0.1 * 7 + 5.0, rel_tol=1e-6)
    assert torch.equal(prox_sparse_group_lasso(delta, 0.0, 0.1, 1.0), delta)


def test_scaled_prox_satisfies_its_optimality_conditions():
    """0 ∈ D(X − Δ)/η + γ∂‖X‖₁ + λ∂Σ_h‖X_h‖₂, checked entry by entry and head by head."""
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(6, 32, generator=g, dtype=torch.float64)
    metric = torch.rand(6, 32, generator=g, dtype=torch.float64) * 5 + 0.1
    delta[2] *= 0.02  # a weak head: must vanish
    step, gamma, lam = 0.4, 0.3, 0.8
    x = prox_sparse_group_lasso_scaled(delta, step, gamma, lam, metric)
    pull = metric * (delta - x) / step  # = γ s + λ t for subgradients s of ‖·‖₁, t of ‖·‖₂
    assert x[2].eq(0).all() and (x.norm(dim=-1) > 0).sum() >= 3
    for h in range(6):
        if x[h].eq(0).all():  # some |s_i| ≤ 1 leaves a residual of norm ≤ λ
            residual = torch.sign(pull[h]) * (pull[h].abs() - gamma).clamp_min(0)
            assert residual.norm() <= lam + 1e-9
            continue
        on = x[h] != 0
        expected = gamma * torch.sign(x[h][on]) + lam * x[h][on] / x[h].norm()
        torch.testing.assert_close(pull[h][on], expected)
        assert (pull[h][~on].abs() <= gamma + 1e-9).all()


def test_scaled_prox_with_unit_metric_is_the_plain_prox():
    g = torch.Generator().manual_seed(2)
    delta = torch.randn(3, 4, 16, generator=g, dtype=torch.float64)
    plain = prox_sparse_group_lasso(delta, 0.5, 0.2, 0.9)
    torch.testing.assert_close(prox_sparse_group_lasso_scaled(delta, 0.5, 0.2, 0.9, torch.ones_like(delta)), plain)
