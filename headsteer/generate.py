"""Greedy decoding with a KV cache, Δ added once at each prompt's last token.

The prompt minus its last token is run once through the base model (no Δ,
no logits); the last prompt token then runs with the Δ hooks attached, and
every generated token after it runs without them, reading the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headsteer.fitting.forward import build_prefix
from headsteer.hooks import AtIndex, PromptEndAdd, PromptPositions, Steerer, added_hooks, delta_hooks
from headsteer.intervention import Intervention, steer
from headsteer.prompts import TokenBatch


@dataclass(frozen=True)
class RowDeltas:
    """One Δ per row, each at its own layer: many interventions scored in one batch."""

    layers: Int[Tensor, " batch"]
    deltas: Float[Tensor, "batch n_heads d_head"]

    def select(self, rows: slice | Tensor) -> RowDeltas:
        return RowDeltas(self.layers[rows], self.deltas[rows])


Steering = Union[Sequence[Steerer], RowDeltas]  # interventions, function vectors, ... or one Δ per row


def steering_hooks(model, steering: Steering, positions: PromptPositions) -> list[tuple[str, PromptEndAdd]]:
    """The hooks that apply ``steering`` (checking that each intervention fits the model)."""
    if isinstance(steering, RowDeltas):
        return delta_hooks(steering.layers, steering.deltas, positions)
    for iv in steering:
        iv.check_fits(model)
    return [iv.hook(positions) for iv in steering]


@torch.no_grad()
def next_token_logits(
    model, tokens: TokenBatch, interventions: Sequence[Intervention] = ()
) -> Float[Tensor, "batch vocab"]:
    """Logits after each row's last prompt token, with the interventions applied (full forward)."""
    device = model.cfg.device
    with steer(model, interventions, tokens.last_index, tokens.prompt_len):
        logits = model(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    index = tokens.last_index.to(logits.device)
    return logits[torch.arange(len(tokens), device=logits.device), index]


@torch.no_grad()
def greedy_ids(
    model, tokens: TokenBatch, steering: Steering = (), max_new_tokens: int = 6, stop: str | None = "\n"
) -> Int[Tensor, "batch new"]:
    """Greedy new token ids for left-padded prompts.

    A row stops once it emits EOS or its text holds ``stop`` (after leading
    whitespace); it then leaves the batch (its cache rows are dropped), and its
    remaining positions are filled with EOS. Decoding stops when no row is left.
    """
    if int(tokens.last_index.min()) != tokens.input_ids.shape[1] - 1:
        raise ValueError("greedy generation needs left-padded prompts (use encode_prompts)")
    eos = model.tokenizer.eos_token_id
    if eos is None:
        raise ValueError("greedy generation needs a tokenizer with an EOS token to mark finished rows")
    prefix = build_prefix(model, tokens, n_scored=1)
    mask, positions, cache = prefix.mask, prefix.suffix_positions, prefix.cache
    at_first = torch.zeros(len(tokens), dtype=torch.long)
    with added_hooks(model, steering_hooks(model, steering, AtIndex(at_first, prompt_len=1))):
        logits = model(prefix.suffix_ids, attention_mask=mask, position_ids=positions, past_key_values=cache)
    out = torch.full((len(tokens), max_new_tokens), eos, dtype=torch.long)
    active = torch.arange(len(tokens))  # rows of ``out`` still generating, in cache order
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True).cpu()
        out[active, step] = nxt.squeeze(-1)
        going = ~_finished(model, out[active, : step + 1], eos, stop)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():
            keep = torch.nonzero(going).squeeze(-1)
            active, nxt, mask, positions = active[keep], nxt[keep], mask[keep.to(mask.device)], positions[keep.to(mask.device)]
            cache.batch_select_indices(keep.to(mask.device))
        mask = torch.cat([mask, torch.ones_like(nxt, device=mask.device)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(nxt.to(mask.device), attention_mask=mask, position_ids=positions, past_key_values=cache)
    return out


def _finished(model, ids: Int[Tensor, "rows new"], eos: int, stop: str | None) -> Tensor:
    """Rows that emitted EOS, or whose text (leading whitespace dropped) holds ``stop``."""
    done = (ids == eos).any(1)
    if stop:
        done |= torch.tensor([stop in text.lstrip() for text in decode(model, ids)], dtype=torch.bool)
    return done


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
