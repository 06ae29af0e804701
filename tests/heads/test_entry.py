"""Entry strengths from the gradient at Δ = 0: exact for the first proximal step, every layer in one backward."""

from itertools import pairwise

import pytest
import torch

import headsteer as hs
from headsteer.fitting.forward import naive_scored_logits
from headsteer.fitting.losses import first_token_nll
from headsteer.fitting.optim import Fista, ProxAdam
from headsteer.heads.entry import entry_strengths, pair_gradients, strength_grid
from headsteer.prompts import encode_targets

QA = hs.get_template("qa")
TRAIN, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=5, seed=0)


def soft(x, s):
    return torch.sign(x) * (x.abs() - s).clamp_min(0)


def test_the_entry_strength_solves_its_equation():
    g = torch.randn(5, 3, 16, generator=torch.Generator().manual_seed(0))
    e = entry_strengths(g)
    assert e.shape == (5, 3) and (e > 0).all()
    torch.testing.assert_close(soft(g, e[..., None]).norm(dim=-1), e, rtol=1e-5, atol=1e-7)
    assert entry_strengths(torch.zeros(2, 8)).eq(0).all()


@pytest.mark.parametrize("rule", [ProxAdam, Fista])
def test_a_first_proximal_step_from_zero_moves_a_head_iff_the_strength_is_below_its_entry(rule):
    g = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(1))
    e = entry_strengths(g[0])
    for h in range(4):
        for s, moves in ((e[h] * 0.99, True), (e[h] * 1.01, False)):
            one = torch.full((1,), float(s))
            step = rule((1, 4, 16), torch.full((1,), 0.1), one, one, steps=10)
            step.point()
            step.update(g, 0)
            assert bool(step.result()[0, h].norm() > 0) == moves, (rule.__name__, h, s, e[h])


def test_pair_gradients_are_each_pairs_own_gradient_at_zero_at_every_layer(any_model):
    layers = list(range(any_model.cfg.n_layers))
    grads, losses = pair_gradients(any_model, TRAIN, QA, layers)
    assert grads.shape == (len(TRAIN), len(layers), any_model.cfg.n_heads, any_model.cfg.d_head)
    tokens, targets = encode_targets(any_model.tokenizer, QA, TRAIN)
    for layer in layers:  # the reference: the full forward, one layer's Δ at a time
        delta = torch.zeros(len(TRAIN), any_model.cfg.n_heads, any_model.cfg.d_head, requires_grad=True)
        per_pair = first_token_nll(naive_scored_logits(any_model, layer, tokens, delta, 1), targets.target_ids)
        (expected,) = torch.autograd.grad(per_pair.sum(), delta)
        torch.testing.assert_close(grads[:, layer], expected, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(losses, per_pair.detach(), rtol=1e-4, atol=1e-5)


def test_the_grid_falls_log_evenly_from_the_top_to_the_chosen_strength():
    grid = strength_grid(1.0, 0.01, 4)
    assert grid[0] == 1.0 and grid[-1] == 0.01 and len(grid) == 5
    assert [b / a for a, b in pairwise(grid)] == pytest.approx([10**-0.5] * 4)
    assert strength_grid(0.005, 0.01, 4) == (0.01,)  # nothing switches on above the chosen strength
