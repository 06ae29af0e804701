"""Function vectors: leave-one-out prompts, head effects equal to brute-force patching, a planted head."""

import pytest
import torch

import headsteer as hs
from headsteer.baselines.function_vectors import (
    FunctionVector,
    FVConfig,
    fit_function_vector,
    head_output_vector,
    icl_prompts,
    indirect_effects,
    last_token_z,
)
from headsteer.intervention import ModelMismatchError
from headsteer.prompts import encode_texts
from tests.helpers import tiny_bridge

QA = hs.get_template("qa")
PAIRS = [
    hs.Pair(a, b) for a, b in [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("old", "new")]
]


def test_prompts_leave_the_query_out_and_corruption_moves_every_answer():
    clean = icl_prompts(PAIRS, QA, seed=0)
    corrupt = icl_prompts(PAIRS, QA, seed=0, corrupt=True)
    assert len(clean) == len(PAIRS)
    for pair, text, bad in zip(PAIRS, clean, corrupt):
        assert text.endswith(f"Q: {pair.input}\nA:") and f"Q: {pair.input}\nA: {pair.output}" not in text
        assert text.count("Q: ") == len(PAIRS)  # 4 demonstrations + the query
        for other in PAIRS:
            if other is not pair:
                assert f"Q: {other.input}\nA: {other.output}\n" in text
                assert f"Q: {other.input}\nA: {other.output}\n" not in bad  # every demo's answer was moved
    with pytest.raises(ValueError, match="at least 3 training pairs"):
        icl_prompts(PAIRS[:2], QA, seed=0)


def brute_force_effects(model, tokens, mean_z, targets):
    """Patch one head at a time in a full forward (TransformerLens-style replace hook)."""

    def probs(hooks):
        with model.hooks(fwd_hooks=hooks):
            logits = model(tokens.input_ids, attention_mask=tokens.attention_mask)[:, -1]
        return logits.softmax(-1)[torch.arange(len(targets)), targets]

    base = probs([])
    out = torch.zeros(mean_z.shape[:2])
    for layer in range(mean_z.shape[0]):
        for head in range(mean_z.shape[1]):

            def patch(act, hook, layer=layer, head=head):
                act = act.clone()
                act[:, -1, head] = mean_z[layer, head]
                return act

            out[layer, head] = (probs([(f"blocks.{layer}.attn.hook_z", patch)]) - base).mean()
    return out


def test_head_effects_equal_brute_force_patching(any_model):
    tokens = encode_texts(any_model.tokenizer, icl_prompts(PAIRS, QA, seed=1, corrupt=True))
    clean = encode_texts(any_model.tokenizer, icl_prompts(PAIRS, QA, seed=1))
    mean_z = last_token_z(any_model, clean).mean(0)
    targets = torch.tensor(any_model.tokenizer.convert_tokens_to_ids([p.output for p in PAIRS]))
    with torch.no_grad():
        expected = brute_force_effects(any_model, tokens, mean_z, targets)
    got = indirect_effects(any_model, tokens, mean_z, targets)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_a_planted_head_is_the_only_one_with_an_effect(kind):
    model = tiny_bridge(kind)
    d_head = model.cfg.d_head
    with torch.no_grad():  # silence every head's output except layer 1, head 2
        for layer, block in enumerate(model.original_model.model.layers):
            w = block.self_attn.o_proj.weight
            keep = w[:, 2 * d_head : 3 * d_head].clone()
            w.zero_()
            if layer == 1:
                w[:, 2 * d_head : 3 * d_head] = keep
    _fv, table = fit_function_vector(model, PAIRS, QA, FVConfig(top_k=1, layer=1))
    planted = table[(table["layer"] == 1) & (table["head"] == 2)]
    others = table.drop(planted.index)
    assert planted.aie.abs().item() > 1000 * others.aie.abs().max()  # the rest is fp32 rounding
    assert set(table.columns) == {"task", "layer", "head", "aie", "rank"} and len(table) == 3 * 4


@pytest.mark.parametrize("kind", ["gpt2", "llama"])  # Gemma normalises after W_O, so hook_attn_out differs
def test_head_output_vector_is_the_heads_share_of_the_attention_output(kind):
    """Σ_h z_h W_O^h over all heads plus the output bias is what the attention block writes."""
    any_model = tiny_bridge(kind)
    tokens = encode_texts(any_model.tokenizer, ["Q: hot\nA:"])
    z = last_token_z(any_model, tokens)[0]  # [L, H, D]
    store = {}
    with any_model.hooks(fwd_hooks=[("blocks.1.hook_attn_out", lambda act, hook: store.setdefault("out", act))]):
        any_model(tokens.input_ids)
    heads = [(1, h) for h in range(any_model.cfg.n_heads)]
    b_o = any_model.blocks[1].attn.b_O
    expected = store["out"][0, -1] - (b_o.detach() if b_o is not None else 0)
    torch.testing.assert_close(head_output_vector(any_model, z, heads), expected, rtol=1e-4, atol=1e-5)


def test_function_vector_steers_and_refuses_other_models(gemma_kinds):
    fv, table = fit_function_vector(gemma_kinds, PAIRS, QA, FVConfig(top_k=3), task="antonym")
    assert fv.layer == gemma_kinds.cfg.n_layers // 3 and len(fv.heads) == 3
    assert list(table["rank"][:3]) == [1, 2, 3] and fv.heads == tuple(zip(table["layer"][:3], table["head"][:3]))
    tokens = hs.encode_prompts(gemma_kinds.tokenizer, QA, ["up", "big"])
    strong = FunctionVector(10 * fv.vector, fv.layer, fv.heads, fv.model, fv.task)
    assert not torch.allclose(
        hs.next_token_logits(gemma_kinds, tokens), hs.next_token_logits(gemma_kinds, tokens, [strong])
    )
    plain = hs.evaluate_pairs(gemma_kinds, PAIRS, QA, progress=False)["prediction"].tolist()
    assert hs.evaluate_pairs(gemma_kinds, PAIRS, QA, [fv], progress=False)["prediction"].tolist() != plain
    with pytest.raises(ModelMismatchError):
        fv.check_fits(tiny_bridge("llama"))
    with pytest.raises(ValueError, match="top_k must be"):
        FVConfig(top_k=0)
    with pytest.raises(ValueError, match="out of range"):
        fit_function_vector(gemma_kinds, PAIRS, QA, FVConfig(layer=7))
