"""The prefix-cached forward gives the naive forward's logits, gradients and fits."""

import pytest
import torch

import headsteer as hs
from headsteer.backends import model_kind
from headsteer.fitting.forward import PrefixCachedForward, build_prefix, naive_scored_logits, run_suffix
from headsteer.fitting.losses import scored_positions, task_loss
from headsteer.prompts import encode_targets

QA = hs.get_template("qa")
# Prompts and answers of different lengths, so both sides of the batch are padded.
PAIRS = [
    hs.Pair("hot", "cold"),
    hs.Pair("good morning", "bonjour madame"),
    hs.Pair("big", "small"),
    hs.Pair("up", "down"),
]


def loss_and_grad(forward, model, loss, layer=1, seed=0):
    tokens, targets = encode_targets(model.tokenizer, QA, PAIRS, include_stop=loss == "sequence")
    delta = torch.randn(model.cfg.n_heads, model.cfg.d_head, generator=torch.Generator().manual_seed(seed))
    delta.requires_grad_(True)
    value = task_loss(loss, forward(model, layer, tokens, delta, scored_positions(loss, targets)), targets).mean()
    (grad,) = torch.autograd.grad(value, delta)
    return value.detach(), grad


@pytest.mark.parametrize("loss", ["first_token", "sequence"])
def test_same_loss_and_gradient_as_the_naive_forward(any_model, loss):
    fast = PrefixCachedForward()
    for seed in (0, 1):  # the second call reuses the cached prefix
        ref_loss, ref_grad = loss_and_grad(naive_scored_logits, any_model, loss, seed=seed)
        got_loss, got_grad = loss_and_grad(fast, any_model, loss, seed=seed)
        torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_same_fit_history_as_the_naive_forward(any_model):
    config = hs.FitConfig(layer=2, steps=8, lr=0.5, gamma=0.001, lam=0.001)
    naive = hs.fit(any_model, PAIRS, QA, config, forward=naive_scored_logits, progress=False)
    fast = hs.fit(any_model, PAIRS, QA, config, progress=False)  # the default forward is the fast one
    torch.testing.assert_close(
        torch.tensor(fast.history["objective"].values),
        torch.tensor(naive.history["objective"].values),
        rtol=1e-4,
        atol=1e-5,
    )
    torch.testing.assert_close(fast.intervention.delta, naive.intervention.delta, rtol=1e-3, atol=1e-5)


def test_cache_follows_the_batch(gemma_tiny):
    fast = PrefixCachedForward()
    a, _ = encode_targets(gemma_tiny.tokenizer, QA, PAIRS[:2])
    b, _ = encode_targets(gemma_tiny.tokenizer, QA, PAIRS[2:])
    zero = torch.zeros(gemma_tiny.cfg.n_heads, gemma_tiny.cfg.d_head)
    for tokens in (a, b, a):
        with torch.no_grad():
            torch.testing.assert_close(
                fast(gemma_tiny, 1, tokens, zero, 1).logits(),
                naive_scored_logits(gemma_tiny, 1, tokens, zero, 1),
                rtol=1e-5,
                atol=1e-5,
            )


def test_the_cache_does_not_grow_step_after_step(any_model):
    """Each step runs the suffix against the prefix's keys/values; the suffix's must not stay in the cache."""
    fast = PrefixCachedForward()
    tokens, _ = encode_targets(any_model.tokenizer, QA, PAIRS)
    delta = torch.zeros(any_model.cfg.n_heads, any_model.cfg.d_head)
    lengths = []
    for _ in range(3):
        fast(any_model, 1, tokens, delta, 2)
        lengths.append(len(next(iter(fast._prefixes.values()))[1].cache))
    assert lengths == [int(tokens.last_index.max())] * 3  # the left-padded prefixes, and nothing more


def test_repeated_rows_share_one_prefix_run_and_keep_their_values(any_model, monkeypatch):
    """A batch of many fits on the same pairs (a head map's layers and resamples) runs each distinct prefix once."""
    pairs = [PAIRS[1], PAIRS[0], PAIRS[1], PAIRS[2], PAIRS[0], PAIRS[1]]
    tokens, _ = encode_targets(any_model.tokenizer, QA, pairs)
    kind = type(model_kind(any_model))
    batch_sizes = []
    real_prefill = kind.prefill

    def counting(self, model, ids, mask):
        batch_sizes.append(len(ids))
        return real_prefill(self, model, ids, mask)

    monkeypatch.setattr(kind, "prefill", counting)
    layers = torch.tensor([0, 1, 2, 1, 0, 2])
    delta = torch.randn(
        len(pairs), any_model.cfg.n_heads, any_model.cfg.d_head, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        prefix = build_prefix(any_model, tokens, n_scored=1, repeats=2)
        got = run_suffix(any_model, prefix, layers.repeat_interleave(2), delta.repeat_interleave(2, dim=0)).logits()
        want = naive_scored_logits(any_model, layers, tokens, delta, 1)
    assert batch_sizes == [3]  # three distinct prompts among six rows, one prefix run
    torch.testing.assert_close(got[::2], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1::2], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["first_token", "sequence"])
def test_the_bf16_weights_is_close_to_fp32_and_made_once(gemma_tiny, loss):
    """Off by default; on, the loss and gradient stay within bf16's rounding and the bf16 copy is made once."""
    assert not PrefixCachedForward().bf16_weights
    low = PrefixCachedForward(bf16_weights=True)
    for seed in (0, 1):
        ref_loss, ref_grad = loss_and_grad(PrefixCachedForward(), gemma_tiny, loss, seed=seed)
        got_loss, got_grad = loss_and_grad(low, gemma_tiny, loss, seed=seed)
        torch.testing.assert_close(got_loss, ref_loss, rtol=2e-2, atol=2e-2)
        assert torch.nn.functional.cosine_similarity(got_grad.flatten(), ref_grad.flatten(), dim=0) > 0.99
    (((weight,), copy),) = low._bf16.values()
    assert copy.dtype == torch.bfloat16 and weight.dtype == torch.float32
