"""Each row runs from its own layer: the same values and gradients as every block, without the blocks below."""

from dataclasses import replace

import pytest
import torch

import headsteer as hs
from headsteer.fitting import forward as forward_module
from headsteer.fitting import from_layer
from headsteer.fitting.forward import PrefixCache, PrefixCachedForward, build_prefix
from headsteer.fitting.from_layer import FromLayer
from headsteer.fitting.losses import scored_positions, task_loss
from headsteer.prompts import encode_targets

QA = hs.get_template("qa")
PAIRS = [  # prompts and answers of different lengths: both sides of the batch padded
    hs.Pair("hot", "cold"),
    hs.Pair("good morning", "bonjour madame"),
    hs.Pair("big", "small"),
    hs.Pair("up", "down"),
    hs.Pair("fast", "slow"),
    hs.Pair("early today", "late"),
]


def per_row_layers(model) -> torch.Tensor:
    """Every layer, more than once, in no order: rows join at blocks in the middle of the batch."""
    return torch.tensor([(2 * i + 1) % model.cfg.n_layers for i in range(len(PAIRS))])


ENCODED: dict = {}


def loss_and_grad(model, forward, layers, loss="sequence", seed=0):
    # The same batch objects every call, as in a fit: the forward's plan is made once per batch.
    key = (id(model), loss)
    if key not in ENCODED:
        ENCODED[key] = (model, encode_targets(model.tokenizer, QA, PAIRS, include_stop=loss == "sequence"))
    tokens, targets = ENCODED[key][1]
    shape = (len(PAIRS), model.cfg.n_heads, model.cfg.d_head)
    delta = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    scored = forward(model, layers, tokens, delta, scored_positions(loss, targets))
    per_row = task_loss(loss, scored, targets)
    (grad,) = torch.autograd.grad(per_row.sum(), delta)
    return scored.hidden.detach(), per_row.detach(), grad


def prepared(forward: PrefixCachedForward):
    (entry,) = forward._prefixes.values()
    return entry[1]


@pytest.mark.parametrize("loss", ["first_token", "sequence"])
def test_rows_from_their_own_layer_give_every_blocks_values_and_gradients(any_model, loss):
    layers = per_row_layers(any_model)
    assert len(set(layers.tolist())) == any_model.cfg.n_layers
    skipping, every = PrefixCachedForward(), PrefixCachedForward(from_layer=False)
    for seed in (0, 1):  # the second step reuses the plan: the cache was left as it was
        got = loss_and_grad(any_model, skipping, layers, loss, seed)
        want = loss_and_grad(any_model, every, layers, loss, seed)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert isinstance(prepared(skipping), FromLayer) and isinstance(prepared(every), PrefixCache)


def test_a_step_runs_each_block_on_the_rows_at_or_above_their_layer_only(any_model):
    layers = per_row_layers(any_model)
    forward = PrefixCachedForward()
    loss_and_grad(any_model, forward, layers)  # the plan is made here (one run of every block)
    seen = {}

    def count(block):
        def hook(module, args):
            seen[block] = args[0].shape[0]

        return hook

    blocks = any_model.blocks
    handles = [blocks[b].register_forward_pre_hook(count(b)) for b in range(len(blocks))]
    try:
        loss_and_grad(any_model, forward, layers, seed=1)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {b: int((layers <= b).sum()) for b in range(len(blocks))}
    one_layer = PrefixCachedForward()
    top = len(blocks) - 1
    loss_and_grad(any_model, one_layer, torch.full((len(PAIRS),), top))
    seen.clear()
    handles = [blocks[b].register_forward_pre_hook(count(b)) for b in range(len(blocks))]
    try:
        loss_and_grad(any_model, one_layer, torch.full((len(PAIRS),), top), seed=1)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {top: len(PAIRS)}  # the blocks below Δ's layer never run in a step


def test_a_plan_that_does_not_reproduce_the_forward_is_not_used(gemma_kinds, monkeypatch):
    """Where running the blocks by hand gives other final states, every block runs, with a warning."""
    right = FromLayer.hidden

    def off(self, model, delta):  # block by block, a little away from the model's own forward
        return right(self, model, delta) + 1e-2

    monkeypatch.setattr(FromLayer, "hidden", off)
    layers = per_row_layers(gemma_kinds)
    forward = PrefixCachedForward()
    with pytest.warns(UserWarning, match="runs every block"):
        got = loss_and_grad(gemma_kinds, forward, layers)
    want = loss_and_grad(gemma_kinds, PrefixCachedForward(from_layer=False), layers)
    assert isinstance(prepared(forward), PrefixCache)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_without_a_plan_rows_already_in_layer_order_keep_their_prefix(gemma_kinds, monkeypatch):
    """The prefix built for the plan is the batch's own when sorting by layer moved no row: not built twice."""
    right, built = FromLayer.hidden, []
    monkeypatch.setattr(FromLayer, "hidden", lambda self, model, delta: right(self, model, delta) + 1e-2)
    monkeypatch.setattr(forward_module, "build_prefix", lambda *a: built.append(a) or build_prefix(*a))
    for layers, prefixes in [(torch.full((len(PAIRS),), 1), 1), (per_row_layers(gemma_kinds), 2)]:
        built.clear()
        forward = PrefixCachedForward()
        with pytest.warns(UserWarning, match="runs every block"):
            got = loss_and_grad(gemma_kinds, forward, layers)
        want = loss_and_grad(gemma_kinds, PrefixCachedForward(from_layer=False), layers)
        assert len(built) == prefixes + 1  # the second forward builds its own
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_narrowing_cuts_only_batch_first_tensors():
    mask, cos, positions = torch.ones(6, 1, 2, 9), torch.ones(6, 2, 4), torch.arange(6)
    narrowed = from_layer._narrow(({"mask": mask, "pos": (cos, cos)}, positions, None, [torch.ones(1, 6)]), 6, 2)
    assert narrowed[0]["mask"].shape == (2, 1, 2, 9) and narrowed[0]["pos"][1].shape == (2, 2, 4)
    assert narrowed[1] is positions and narrowed[2] is None and narrowed[3][0].shape == (1, 6)


def test_batched_fits_at_many_layers_equal_each_fit_alone(gemma_kinds):
    config = hs.FitConfig(steps=4, lr=0.3)
    jobs = [hs.FitJob(tuple(PAIRS[k : k + 3]), replace(config, layer=k % 3)) for k in range(4)]
    together = hs.fit_many(gemma_kinds, jobs, QA, progress=False)
    for job, result in zip(jobs, together):
        alone = hs.fit(gemma_kinds, job.pairs, QA, job.config, progress=False)
        torch.testing.assert_close(result.intervention.delta, alone.intervention.delta, rtol=1e-4, atol=1e-5)
