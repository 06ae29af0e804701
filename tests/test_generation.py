"""Generation: batched equals one-by-one, and Δ is added once, at the prompt's last token."""

import torch

import headsteer as hs
import headsteer.hooks
from headsteer.generation import could_still_be, cut_at_stop, decode
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
    # The hooks see every pass (prefix, last prompt token, generated tokens), but only the last
    # prompt token's pass is changed, and Δ lands on its one position in every row.
    changed = [(positions, rows) for positions, rows in calls if rows.any()]
    assert len(calls) > 1 and len(changed) == 1
    positions, rows = changed[0]
    assert positions == 1 and rows.all()


def test_cached_generation_equals_full_recomputation(any_model):
    """Δ only at the prompt's last token: re-running the whole sequence each step gives the same tokens."""
    iv = make_iv(any_model, scale=3.0)
    tokens = hs.encode_prompts(any_model.tokenizer, QA, INPUTS)
    fast = hs.greedy_ids(any_model, tokens, [iv], max_new_tokens=4, stop=None)
    ids, mask = tokens.input_ids, tokens.attention_mask
    for _ in range(4):
        with hs.steer(any_model, [iv], tokens.last_index, tokens.prompt_len):
            logits = any_model(ids, attention_mask=mask)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(fast, ids[:, tokens.input_ids.shape[1] :])


def test_generation_with_delta_changes_the_first_logits(gemma_tiny):
    tokens = hs.encode_prompts(gemma_tiny.tokenizer, QA, INPUTS)
    base = hs.next_token_logits(gemma_tiny, tokens)
    steered = hs.next_token_logits(gemma_tiny, tokens, [make_iv(gemma_tiny, scale=3.0)])
    assert base.shape == (len(INPUTS), gemma_tiny.cfg.d_vocab)
    assert not torch.allclose(base, steered)


def test_finished_rows_leave_the_batch_without_changing_any_answer(any_model):
    """A row whose text reaches ``stop`` retires, EOS-filled; every other row decodes as if none had."""
    iv = make_iv(any_model, scale=3.0)
    tokens = hs.encode_prompts(any_model.tokenizer, QA, INPUTS)
    full = hs.greedy_ids(any_model, tokens, [iv], max_new_tokens=4, stop=None)
    eos = any_model.tokenizer.eos_token_id
    texts = lambda ids: [t.lstrip() for t in decode(any_model, ids)]  # noqa: E731
    stops = {t.strip() for t in texts(full.flatten()[:, None])} - {""}
    retired_early = 0
    for stop in stops:
        early = hs.greedy_ids(any_model, tokens, [iv], max_new_tokens=4, stop=stop)
        for row in range(len(full)):
            ends = [k for k in range(4) if stop in texts(full[row : row + 1, : k + 1])[0]]
            k = ends[0] if ends else 3
            assert torch.equal(early[row, : k + 1], full[row, : k + 1])
            assert (early[row, k + 1 :] == eos).all()
            retired_early += k < 3
    assert retired_early > 0  # the case under test happened


def test_rows_that_cannot_be_their_answer_stop_early_and_the_others_decode_in_full(any_model):
    """With expected answers, a row leaves once its text cannot be its answer; a row that can decodes to its end."""
    iv = make_iv(any_model, scale=3.0)
    tokens = hs.encode_prompts(any_model.tokenizer, QA, INPUTS)
    eos = any_model.tokenizer.eos_token_id
    full = hs.greedy_ids(any_model, tokens, [iv], max_new_tokens=4, stop="\n")
    texts = [cut_at_stop(t, "\n") for t in decode(any_model, full, eos)]
    answers = [text if row % 2 == 0 else "zzz no such answer" for row, text in enumerate(texts)]
    early = hs.greedy_ids(any_model, tokens, [iv], max_new_tokens=4, stop="\n", answers=answers)
    stopped_early = 0
    for row in range(len(full)):
        if row % 2 == 0:  # its own answer: never cut
            assert torch.equal(early[row], full[row])
            continue
        kept = int((early[row] != eos).sum())  # the same tokens up to where it stopped, then EOS
        assert torch.equal(early[row, :kept], full[row, :kept]) and (early[row, kept:] == eos).all()
        stopped_early += bool((early[row] != full[row]).any())
    assert stopped_early > 0  # the case under test happened


def test_could_still_be_keeps_only_answers_some_continuation_can_reach():
    assert could_still_be("  Col", "cold", "\n") and could_still_be(" cold ", "Cold", "\n")
    assert could_still_be("ice ", "ice cream", "\n") and not could_still_be(" y\n", "x", "\n")
    assert could_still_be("   ", "cold", "\n") and could_still_be(" \n ", "cold", "\n")  # nothing decided yet
    assert not could_still_be(" cole", "cold", "\n") and not could_still_be(" cold  x", "cold", "\n")
    assert could_still_be(" cold\nQ: hot", "cold", "\n") and not could_still_be(" colder\n", "cold", "\n")
    assert could_still_be(" caf\ufffd", "café", "\n")  # a character whose other bytes are still to come
    assert could_still_be(" STRASSE", "straße", "\n")  # case folding may lengthen a character
    assert could_still_be(" cold Q", "cold", "Q:") and not could_still_be(" cold Q", "col", "Q:")
    assert could_still_be(" cold ", "cold", None) and not could_still_be(" cold x", "cold", None)


def test_model_generate_under_applied_adds_delta_once_with_or_without_a_kv_cache(any_model):
    """``with iv.applied(model): model.generate(...)``: Δ at the prompt's last token only, cache or not.

    Without a KV cache every step re-runs prompt + generated tokens; Δ must stay at the prompt's last
    token (not move to each pass's final token), so both paths give headsteer's own steered tokens.
    """
    iv = make_iv(any_model, scale=3.0)
    for word in INPUTS:
        tokens = hs.encode_prompts(any_model.tokenizer, QA, [word])
        ours = hs.greedy_ids(any_model, tokens, [iv], max_new_tokens=4, stop=None)[0].tolist()
        runs = {}
        for cached in (True, False):
            with iv.applied(any_model):
                out = any_model.generate(
                    tokens.input_ids,
                    max_new_tokens=4,
                    use_past_kv_cache=cached,
                    do_sample=False,
                    stop_at_eos=False,
                    verbose=False,
                )
            runs[cached] = out[0, tokens.input_ids.shape[1] :].tolist()
        assert runs[True] == runs[False] == ours, word


def test_generate_renders_inputs_with_the_template_and_steers(gemma_kinds):
    """``hs.generate``: the people's entry point equals the batched path on the same prompts."""
    iv = make_iv(gemma_kinds, scale=3.0)
    tokens = hs.encode_prompts(gemma_kinds.tokenizer, QA, INPUTS)
    assert hs.generate(gemma_kinds, INPUTS, [iv], max_new_tokens=4) == hs.greedy_generate(gemma_kinds, tokens, [iv], 4)
    assert hs.generate(gemma_kinds, INPUTS, [iv], max_new_tokens=4) != hs.generate(
        gemma_kinds, INPUTS, max_new_tokens=4
    )
    assert hs.generate(gemma_kinds, "Q: hot\nA:", template=None, max_new_tokens=4) == hs.generate(
        gemma_kinds, ["hot"], max_new_tokens=4
    )


def test_an_in_context_vector_acts_at_every_position_through_the_same_protocol(gemma_kinds, monkeypatch):
    """Steering at every position (ICV) is changed in every pass of headsteer's decoding, Δ only once."""
    from headsteer.baselines.icv import fit_icv

    icv = fit_icv(gemma_kinds, [hs.Pair("hot", "cold"), hs.Pair("up", "down"), hs.Pair("big", "small")], 1.0)
    tokens = hs.encode_prompts(gemma_kinds.tokenizer, QA, INPUTS)
    plain = hs.greedy_ids(gemma_kinds, tokens, max_new_tokens=3, stop=None)
    with icv.applied(gemma_kinds):  # the old way: hooks around everything
        around = hs.greedy_ids(gemma_kinds, tokens, max_new_tokens=3, stop=None)
    assert torch.equal(hs.greedy_ids(gemma_kinds, tokens, [icv], max_new_tokens=3, stop=None), around)
    assert not torch.equal(around, plain)
