"""The sparse-group-lasso prox: closed form, exact zeros, and optimality."""

import math

import torch

from headsteer.regularization import penalty, prox_sparse_group_lasso


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
