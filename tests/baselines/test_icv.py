"""In-context vectors: shape and direction, norm-preserving addition, applied to every pass."""

import pytest
import torch

import headsteer as hs
from headsteer.baselines.icv import NormPreservingAdd, fit_icv, last_token_states
from headsteer.intervention import ModelMismatchError
from tests.helpers import tiny_bridge

PAIRS = [hs.Pair(a, b) for a, b in [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow")]]
QA = hs.get_template("qa")


def test_icv_has_one_vector_per_layer_along_the_main_difference(any_model):
    icv = fit_icv(any_model, PAIRS, strength=0.5, task="antonym")
    assert icv.vectors.shape == (any_model.cfg.n_layers, any_model.cfg.d_model)
    diffs = (
        last_token_states(any_model, [p.output for p in PAIRS]) - last_token_states(any_model, [p.input for p in PAIRS])
    ).flatten(1)
    v = icv.vectors.flatten()
    assert torch.isclose(v.norm(), diffs.norm(dim=1).mean(), rtol=1e-4)
    assert v @ diffs.mean(0) > 0
    # v is the top principal direction: an eigenvector of the differences' scatter with its largest eigenvalue
    centred = (diffs - diffs.mean(0)).double()
    scatter, u = centred.T @ centred, (v / v.norm()).double()
    top = torch.linalg.eigvalsh(scatter)[-1]
    torch.testing.assert_close(scatter @ u, top * u, rtol=1e-4, atol=1e-4 * float(top))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        fit_icv(any_model, PAIRS[:1])


def test_norm_preserving_add_moves_direction_not_length():
    act = torch.randn(2, 3, 8)
    out = NormPreservingAdd(torch.ones(8))(act, None)
    torch.testing.assert_close(out.norm(dim=-1), act.norm(dim=-1))
    assert not torch.allclose(out, act)
    assert act.data_ptr() != out.data_ptr()


def test_icv_applies_to_prompt_and_generated_tokens_alike(gemma_kinds):
    """Cached greedy decoding under the ICV equals re-running the whole sequence under it each step."""
    icv = fit_icv(gemma_kinds, PAIRS, strength=1.0)
    tokens = hs.encode_prompts(gemma_kinds.tokenizer, QA, ["up", "big"])
    with icv.applied(gemma_kinds):
        cached = hs.greedy_ids(gemma_kinds, tokens, max_new_tokens=3, stop=None)
        ids, mask = tokens.input_ids, tokens.attention_mask
        for _ in range(3):
            nxt = gemma_kinds(ids, attention_mask=mask)[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(cached, ids[:, tokens.input_ids.shape[1] :])
    plain = hs.greedy_ids(gemma_kinds, tokens, max_new_tokens=3, stop=None)
    assert not torch.equal(plain, cached)  # it did something, and it was removed on exit
    assert torch.equal(plain, hs.greedy_ids(gemma_kinds, tokens, max_new_tokens=3, stop=None))
    with pytest.raises(ModelMismatchError), icv.applied(tiny_bridge("llama")):
        pass
