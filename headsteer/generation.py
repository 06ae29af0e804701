"""Steered greedy generation: :func:`generate` for people, :func:`greedy_ids` for batched scoring.

The prompt minus its last token is run once with a KV cache (no logits); the
last prompt token then runs with Δ added, and every generated token after it
reads the KV cache, so Δ is added exactly once per prompt, at its last token
(see :mod:`headsteer.steering`). Rows that finish leave the batch. How each
kind of model runs with a KV cache is :mod:`headsteer.backends`.

Scoring that needs only the metrics can also pass each row's expected answer:
a row then stops as soon as no continuation of its text can be that answer
(:func:`could_still_be`). Exact match and first-token accuracy come out the
same; the wrong answers' texts are cut where they left the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headsteer.backends import KVCache, ModelKind, model_kind
from headsteer.fitting.forward import build_prefix
from headsteer.fitting.unembed import FinalHidden
from headsteer.hooks import PerPass, added_hooks
from headsteer.prompts import Template, TokenBatch, encode_texts, get_template
from headsteer.steering import Steering, steer, steering_hooks


@torch.no_grad()
def next_token_logits(model, tokens: TokenBatch, steering: Steering = ()) -> Float[Tensor, "batch vocab"]:
    """Logits after each row's last prompt token, steered (full forward)."""
    device = model.cfg.device
    with steer(model, steering, tokens.last_index, tokens.prompt_len):
        logits = model(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    index = tokens.last_index.to(logits.device)
    return logits[torch.arange(len(tokens), device=logits.device), index]


@torch.no_grad()
def greedy_ids(
    model,
    tokens: TokenBatch,
    steering: Steering = (),
    max_new_tokens: int = 6,
    stop: str | None = "\n",
    answers: Sequence[str] | None = None,
) -> Int[Tensor, "batch new"]:
    """Greedy new token ids for left-padded prompts.

    A row stops once it emits EOS or its text holds ``stop`` (after leading
    whitespace); it then leaves the batch (its cache rows are dropped), and its
    remaining positions are filled with EOS. Decoding stops when no row is left.
    With ``answers`` (one per row), a row also stops once its text can no longer
    be its answer: exact match and the first token are unchanged, the work on
    wrong answers is not spent.
    """
    if answers is not None and len(answers) != len(tokens):
        raise ValueError(f"greedy_ids: {len(answers)} answers for {len(tokens)} prompts")
    if int(tokens.last_index.min()) != tokens.input_ids.shape[1] - 1:
        raise ValueError("greedy generation needs left-padded prompts (use encode_prompts)")
    eos = model.tokenizer.eos_token_id
    if eos is None:
        raise ValueError("greedy generation needs a tokenizer with an EOS token to mark finished rows")
    # Prompt-end steering acts only in the pass of the last prompt token; steering at every position
    # (an in-context vector) acts in every pass. One set of hooks, told per pass where the prompt ends.
    prompt_end = PerPass()
    with added_hooks(model, steering_hooks(model, steering, prompt_end)):
        return _decode(model, tokens, prompt_end, max_new_tokens, stop, eos, answers)


def _decode(
    model,
    tokens: TokenBatch,
    prompt_end: PerPass,
    max_new_tokens: int,
    stop: str | None,
    eos: int,
    answers: Sequence[str] | None,
) -> Tensor:
    kind = model_kind(model)
    prefix = build_prefix(model, tokens, n_scored=1)  # every prompt token but the last: no prompt end here
    cache = prefix.cache
    prompt_end.current = torch.zeros(len(tokens), dtype=torch.long)  # the last prompt token, position 0 of its pass
    logits = _next_logits(model, kind, cache, prefix.suffix_ids, prefix.suffix_mask)
    prompt_end.current = None  # generated tokens: past the prompt
    out = torch.full((len(tokens), max_new_tokens), eos, dtype=torch.long)
    active = torch.arange(len(tokens))  # rows of ``out`` still generating, in cache order
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1, keepdim=True).cpu()
        out[active, step] = nxt.squeeze(-1)
        expected = None if answers is None else [answers[int(i)] for i in active]
        going = ~_finished(model, out[active, : step + 1], eos, stop, expected)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():
            keep = torch.nonzero(going).squeeze(-1)
            active, nxt = active[keep], nxt[keep]
            cache.keep_rows(keep)
        logits = _next_logits(model, kind, cache, nxt, torch.ones_like(nxt))
    return out


def _next_logits(
    model, kind: ModelKind, cache: KVCache, ids: Int[Tensor, "batch new"], mask: Int[Tensor, "batch new"]
) -> Float[Tensor, "batch vocab"]:
    """The next-token logits after ``ids``, which continue ``cache`` (and are kept in it)."""
    hidden = kind.final_hidden(model, cache, ids, mask, keep=True)
    return FinalHidden(hidden[:, -1:], *kind.unembedding(model)).logits()[:, 0]


def _finished(model, ids: Int[Tensor, "rows new"], eos: int, stop: str | None, answers: Sequence[str] | None) -> Tensor:
    """Rows that emitted EOS, whose text (leading whitespace dropped) holds ``stop``, or that can't be their answer."""
    done = (ids == eos).any(1)
    if stop or answers is not None:
        texts = decode(model, ids)
        if stop:
            done |= torch.tensor([stop in text.lstrip() for text in texts], dtype=torch.bool)
        if answers is not None:
            done |= torch.tensor([not could_still_be(t, a, stop) for t, a in zip(texts, answers)], dtype=torch.bool)
    return done


def normalize(text: str) -> str:
    """What exact match compares: the text without surrounding whitespace, case-folded."""
    return text.strip().casefold()


def could_still_be(text: str, answer: str, stop: str | None) -> bool:
    """Whether some continuation of the generated ``text`` can still be cut to an exact match of ``answer``.

    The final answer is ``cut_at_stop(text + more, stop)``, and it matches when
    ``normalize(final) == normalize(answer)``. Of ``text`` only a part is sure to
    begin the final answer: leading whitespace goes; a trailing stop's beginning
    may complete into ``stop`` and cut there; a trailing U+FFFD may be a character
    whose other bytes are still to come, and trailing whitespace may be merged
    into the next token when decoded (``" ."`` -> ``"."``). Case folding maps each
    character on its own, so the answer stays possible while the folded sure part
    begins the folded answer. Whitespace-only text decides nothing yet.
    """
    sure = text.lstrip()
    if stop and stop in sure:  # the answer is known
        return normalize(cut_at_stop(sure, stop)) == normalize(answer)
    if stop:
        sure = sure[: len(sure) - len(stop) + 1]
    sure = sure.rstrip().rstrip("\ufffd").rstrip()
    return normalize(answer).startswith(sure.casefold())


def generate(
    model,
    inputs: str | Sequence[str],
    steering: Steering = (),
    template: Template | str | None = "qa",
    max_new_tokens: int = 20,
    stop: str | None = "\n",
) -> list[str]:
    """Greedy answers for ``inputs``, steered: ``hs.generate(model, ["hot", "tall"], [iv])``.

    Each input is rendered by ``template`` (a name such as ``"qa"``, a
    :class:`~headsteer.prompts.Template`, or None for texts that already are
    prompts); the answer is cut at ``stop`` (None: keep all ``max_new_tokens``).
    """
    model_kind(model)  # a model headsteer cannot run is refused before any work
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    chosen = get_template(template) if isinstance(template, str) else template
    prompts = [chosen.format_prompt(x) for x in texts] if chosen is not None else texts
    return greedy_generate(model, encode_texts(model.tokenizer, prompts), steering, max_new_tokens, stop)


def greedy_generate(
    model, tokens: TokenBatch, steering: Steering = (), max_new_tokens: int = 6, stop: str | None = "\n"
) -> list[str]:
    """Greedy continuations, decoded (up to EOS) and cut at ``stop``."""
    ids = greedy_ids(model, tokens, steering, max_new_tokens, stop)
    return [cut_at_stop(t, stop) for t in decode(model, ids, model.tokenizer.eos_token_id)]


def decode(model, new: Int[Tensor, "batch new"], eos: int | None = None) -> list[str]:
    return decode_tokens(model.tokenizer, new, eos)


def decode_tokens(tokenizer, new: Int[Tensor, "batch new"], eos: int | None = None) -> list[str]:
    """Each row's text, up to (not including) its first ``eos``."""
    rows = [row[: row.index(eos)] if eos is not None and eos in row else row for row in new.tolist()]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def cut_at_stop(text: str, stop: str | None) -> str:
    """Drop leading whitespace, then everything from the first ``stop`` on."""
    if not stop:
        return text
    head = text.lstrip()
    return head.split(stop, 1)[0] if stop in head else head
