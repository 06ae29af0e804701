"""The forward the fitter differentiates: logits at the scored positions under Δ.

A ``ScoredForward`` is ``fn(model, layer, tokens, delta, n_scored) -> scored``
returning, at positions
``last_index + 0 .. last_index + n_scored - 1`` with Δ added to
``blocks.{layer}.attn.hook_z`` at ``last_index``, either the logits
``[batch, n_scored, vocab]`` or a :class:`~headsteer.unembed.FinalHidden`
(see ``headsteer.losses``). ``layer`` is one int, or one
per row with a per-row Δ ``[batch, n_heads, d_head]`` (many fits in one batch). Any implementation (e.g. a
prefix-cached one) must give the same values and gradients as
:func:`naive_scored_logits`, the reference.
"""

from __future__ import annotations

from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headsteer.hooks import AtIndex, added_hooks, delta_hooks
from headsteer.losses import Scored
from headsteer.prompts import TokenBatch


class ScoredForward(Protocol):
    def __call__(
        self,
        model,
        layer: int | Int[Tensor, " batch"],
        tokens: TokenBatch,
        delta: Float[Tensor, "*rows n_heads d_head"],
        n_scored: int,
    ) -> Scored: ...


def gather_positions(
    logits: Float[Tensor, "batch pos vocab"], tokens: TokenBatch, n_scored: int
) -> Float[Tensor, "batch n_scored vocab"]:
    """``logits[i, last_index[i] + j]`` for j < n_scored (clamped inside the row)."""
    offsets = torch.arange(n_scored, device=logits.device)
    positions = (tokens.last_index.to(logits.device)[:, None] + offsets).clamp_max(logits.shape[1] - 1)
    return logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))


def naive_scored_logits(
    model,
    layer: int | Int[Tensor, " batch"],
    tokens: TokenBatch,
    delta: Float[Tensor, "*rows n_heads d_head"],
    n_scored: int,
) -> Float[Tensor, "batch n_scored vocab"]:
    """Full forward of every row through every layer; the reference implementation."""
    device = model.cfg.device
    with added_hooks(model, delta_hooks(layer, delta, AtIndex(tokens.last_index, tokens.prompt_len))):
        logits = model(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    return gather_positions(logits, tokens, n_scored)
