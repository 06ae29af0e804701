"""Greedy decoding with a KV cache, Δ added once at each prompt's last token."""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headsteer.intervention import Intervention, steer
from headsteer.prompts import TokenBatch


@torch.no_grad()
def next_token_logits(
    model, tokens: TokenBatch, interventions: Sequence[Intervention] = ()
) -> Float[Tensor, "batch vocab"]:
    """Logits after each row's last prompt token, with the interventions applied."""
    device = model.cfg.device
    with steer(model, interventions, tokens.last_index, tokens.prompt_len):
        logits = model(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    index = tokens.last_index.to(logits.device)
    return logits[torch.arange(len(tokens), device=logits.device), index]


@torch.no_grad()
def greedy_generate(
    model,
    tokens: TokenBatch,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 6,
    stop: str | None = "\n",
) -> list[str]:
    """Greedy continuations of left-padded prompts, decoded, cut at ``stop``.

    The prompt pass carries Δ at ``last_index``; each later one-token pass
    reads the KV cache and gets no Δ of its own.
    """
    if int(tokens.last_index.min()) != tokens.input_ids.shape[1] - 1:
        raise ValueError("greedy_generate needs left-padded prompts (use encode_prompts)")
    device = model.cfg.device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    new = torch.empty((len(tokens), 0), dtype=torch.long, device=device)
    eos = model.tokenizer.eos_token_id
    done = torch.zeros(len(tokens), dtype=torch.bool, device=device)
    with steer(model, interventions, tokens.last_index, tokens.prompt_len):
        logits, cache = model(ids, attention_mask=mask, position_ids=positions, return_type="logits_and_cache")
        for step in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            new = torch.cat([new, nxt], dim=1)
            done |= nxt.squeeze(-1) == eos
            finished = stop and all(stop in t.lstrip() for t in _decode(model, new))
            if step == max_new_tokens - 1 or done.all() or finished:
                break
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            positions = positions[:, -1:] + 1
            logits, cache = model(
                nxt, attention_mask=mask, position_ids=positions, past_key_values=cache, return_type="logits_and_cache"
            )
    return [cut_at_stop(t, stop) for t in _decode(model, new, eos)]


def _decode(model, new: Int[Tensor, "batch new"], eos: int | None = None) -> list[str]:
    texts = []
    for row in new.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(model.tokenizer.decode(row, skip_special_tokens=True))
    return texts


def cut_at_stop(text: str, stop: str | None) -> str:
    """Drop leading whitespace, then everything from the first ``stop`` on."""
    if not stop:
        return text
    head = text.lstrip()
    return head.split(stop, 1)[0] if stop in head else head
