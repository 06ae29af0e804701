"""Generation: batched equals one-by-one, and Δ is added once, at the prompt's last token."""

import torch

import headsteer as hs
import headsteer.hooks
from tests.test_hooks import INPUTS, make_iv

QA = hs.get_template("qa")


def generated_ids(model, inputs, ivs):
    tokens = hs.encode_prompts(model.tokenizer, QA, inputs)
    return hs.greedy_generate(model, tokens, ivs, max_new_tokens=4, stop=None)


def test_batched_generation_matches_one_prompt_at_a_time(any_model):
    iv = make_iv(any_model, scale=3.0)
    for ivs in ([], [iv]):
        batched = generated_ids(any_model, INPUTS, ivs)
        single = [generated_ids(any_model, [x], ivs)[0] for x in INPUTS]
        assert batched == single


def test_generation_adds_delta_once_at_the_prompts_last_token(any_model, monkeypatch):
    calls = []
    original = headsteer.hooks.PromptEndAdd.__call__

    def spy(self, act, hook):
        out = original(self, act, hook)
        calls.append((act.shape[1], (out - act).ne(0).any(dim=(2, 3))))
        return out

    monkeypatch.setattr(headsteer.hooks.PromptEndAdd, "__call__", spy)
    tokens = hs.encode_prompts(any_model.tokenizer, QA, INPUTS)
    hs.greedy_generate(any_model, tokens, [make_iv(any_model)], max_new_tokens=4, stop=None)
    assert len(calls) == 4, "one prompt pass and three cached one-token passes"
    prompt_len, changed = calls[0]
    assert prompt_len == tokens.input_ids.shape[1]
    assert changed[:, -1].all() and not changed[:, :-1].any()
    assert all(pos == 1 and not changed.any() for pos, changed in calls[1:])


def test_generation_with_delta_changes_the_first_logits(gemma_tiny):
    tokens = hs.encode_prompts(gemma_tiny.tokenizer, QA, INPUTS)
    base = hs.next_token_logits(gemma_tiny, tokens)
    steered = hs.next_token_logits(gemma_tiny, tokens, [make_iv(gemma_tiny, scale=3.0)])
    assert base.shape == (len(INPUTS), gemma_tiny.cfg.d_vocab)
    assert not torch.allclose(base, steered)
