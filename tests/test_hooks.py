"""The additive hook: where Δ lands, with which padding, and that hooks are cleaned up."""

import pytest
import torch

import headsteer as hs
from headsteer.hooks import AtIndex, PromptEndAdd, PromptTracker, hook_z_name
from headsteer.models import ModelSignature

LAYER = 1
INPUTS = ["hot", "good morning", "big"]  # different lengths, so padding matters


def make_iv(model, head=None, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    delta = scale * torch.randn(model.cfg.n_heads, model.cfg.d_head, generator=g)
    if head is not None:
        keep = torch.zeros_like(delta)
        keep[head] = 1
        delta = delta * keep
    return hs.Intervention(delta, LAYER, ModelSignature.of(model), task="test")


def batch(model, side):
    tokens = hs.encode_prompts(model.tokenizer, hs.get_template("qa"), INPUTS)
    if side == "left":
        return tokens
    # Re-pack the same rows right-padded.
    rows = [r[m.bool()] for r, m in zip(tokens.input_ids, tokens.attention_mask)]
    ids = torch.zeros_like(tokens.input_ids)
    mask = torch.zeros_like(tokens.attention_mask)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    from headsteer.prompts import TokenBatch

    return TokenBatch(ids, mask, torch.tensor([len(r) - 1 for r in rows]))


def run(model, tokens, interventions=(), extra_hooks=()):
    with hs.steer(model, interventions, tokens.last_index, tokens.prompt_len), model.hooks(fwd_hooks=list(extra_hooks)):
        return model(tokens.input_ids, attention_mask=tokens.attention_mask)


def test_zero_delta_is_bit_identical(any_model):
    tokens = batch(any_model, "left")
    zero = make_iv(any_model, scale=0.0)
    base = run(any_model, tokens)
    assert torch.equal(run(any_model, tokens, [zero]), base)
    with zero.applied(any_model):  # default placement too
        assert torch.equal(any_model(tokens.input_ids, attention_mask=tokens.attention_mask), base)


@pytest.mark.parametrize("side", ["left", "right"])
def test_delta_on_one_head_touches_only_that_head_at_last_prompt_token(any_model, side):
    tokens = batch(any_model, side)
    head = 2
    iv = make_iv(any_model, head=head)
    seen = {}

    def record(key):
        def fn(act, hook):
            seen[key] = act.detach().clone()
            return act

        return fn

    name = hook_z_name(LAYER)
    run(any_model, tokens, extra_hooks=[(name, record("base"))])
    run(any_model, tokens, [iv], extra_hooks=[(name, record("steered"))])
    diff = seen["steered"] - seen["base"]
    expected = torch.zeros_like(diff)
    for row, last in enumerate(tokens.last_index.tolist()):
        expected[row, last, head] = iv.delta[head]
    torch.testing.assert_close(diff, expected, rtol=0, atol=1e-6)
    changed = diff != 0
    assert changed.any(dim=(0, 1, 3)).tolist() == [h == head for h in range(any_model.cfg.n_heads)]
    # Each row changes at exactly one position: its last prompt token.
    assert changed.any(dim=(2, 3)).sum(1).tolist() == [1] * len(INPUTS)


def test_left_and_right_padding_give_the_same_last_token_logits(any_model):
    iv = make_iv(any_model)
    outs = {}
    for side in ("left", "right"):
        tokens = batch(any_model, side)
        logits = run(any_model, tokens, [iv])
        outs[side] = logits[torch.arange(len(INPUTS)), tokens.last_index]
    torch.testing.assert_close(outs["left"], outs["right"], rtol=1e-4, atol=1e-4)


def _n_hooks(model, name):
    return len(model.hook_dict[name].fwd_hooks)


def test_no_hook_survives_an_exception_and_user_hooks_stay(gemma_tiny):
    model, name = gemma_tiny, hook_z_name(LAYER)
    user_hook = lambda act, hook: act  # noqa: E731
    model.add_hook(name, user_hook)
    try:
        before = _n_hooks(model, name)
        with pytest.raises(RuntimeError, match="boom"), make_iv(model).applied(model):
            assert _n_hooks(model, name) == before + 1
            raise RuntimeError("boom")
        assert _n_hooks(model, name) == before
        assert model.hook_dict[name].fwd_hooks[-1].user_hook is user_hook
    finally:
        model.reset_hooks(including_permanent=True)
    assert _n_hooks(model, name) == 0


def test_tracked_placement_finds_the_prompt_end_in_every_kind_of_pass():
    """A prompt pass gets Δ at its end; a re-run of prompt + new tokens at the prompt's end; a KV step none."""
    tracker, delta = PromptTracker(), torch.ones(2, 3)
    hook = PromptEndAdd(delta, tracker)
    prompt = torch.randn(2, 4, 5)
    tracker.observe(prompt, None)
    act = torch.zeros(2, 4, 2, 3)
    out = hook(act, None)
    assert out[:, -1].eq(1).all() and out[:, :-1].eq(0).all()
    assert act.eq(0).all(), "the hook must not edit the activation in place"
    tracker.observe(torch.randn(2, 1, 5), None)  # a KV-cache step
    assert hook(torch.zeros(2, 1, 2, 3), None).eq(0).all()
    tracker.observe(torch.cat([prompt, torch.randn(2, 2, 5)], 1), None)  # the prompt re-run with 2 new tokens
    rerun = hook(torch.zeros(2, 6, 2, 3), None)
    assert rerun[:, 3].eq(1).all() and rerun.sum() == 2 * 6, "Δ at the prompt's last token, not the final one"
    tracker.observe(torch.randn(2, 6, 5), None)  # another prompt of the same length: a new prompt
    assert hook(torch.zeros(2, 6, 2, 3), None)[:, 5].eq(1).all()


def test_explicit_placement_skips_cache_continuations_and_checks_shape():
    hook = PromptEndAdd(torch.ones(2, 3), AtIndex(torch.tensor([1, 3]), prompt_len=4))
    out = hook(torch.zeros(2, 4, 2, 3), None)
    assert out[0, 1].eq(1).all() and out[1, 3].eq(1).all() and out.sum() == 12
    assert hook(torch.zeros(2, 1, 2, 3), None).eq(0).all()
    with pytest.raises(ValueError, match="does not fit Δ"):
        hook(torch.zeros(2, 4, 3, 3), None)


def test_per_row_delta():
    delta = torch.stack([torch.ones(2, 3), 2 * torch.ones(2, 3)])
    out = PromptEndAdd(delta, AtIndex(torch.tensor([0, 1]), prompt_len=2))(torch.zeros(2, 2, 2, 3), None)
    assert out[0, 0].eq(1).all() and out[1, 1].eq(2).all() and out[0, 1].eq(0).all()


def test_layer_out_of_range_is_named(gemma_tiny):
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        hs.fit(gemma_tiny, [hs.Pair("hot", "cold")], hs.get_template("qa"), hs.FitConfig(layer=7, steps=1))
