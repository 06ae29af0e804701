"""The forwards the fitter differentiates: what the last prompt token's Δ does to the scored positions.

A ``ScoredForward`` is ``fn(model, layer, tokens, delta, n_scored) -> scored``
returning, at positions ``last_index + 0 .. last_index + n_scored - 1`` with Δ
added to ``blocks.{layer}.attn.hook_z`` at ``last_index``, either the logits
``[batch, n_scored, vocab]`` or a :class:`~headsteer.fitting.unembed.FinalHidden`
(see :mod:`headsteer.fitting.losses`). ``layer`` is one int, or one per row
with a per-row Δ ``[batch, n_heads, d_head]`` (many fits in one batch).

Two implementations, with the same values and gradients (up to fp32 summation order):

* :func:`naive_scored_logits` — every row through every layer; the reference.
* :class:`PrefixCachedForward` — the default. Δ enters at row i's last prompt
  token p_i, so nothing at positions < p_i depends on it, at any layer: their
  keys and values are computed once per batch (the *prefix*, left-padded and
  run with a KV cache). Each step then runs only the *suffix* — positions
  p_i .. p_i + n_scored − 1 — against that cache and returns their final
  hidden states with the unembedding, which the losses read in one streaming
  pass instead of materialising ``[rows, vocab]`` logits::

      h_i = final_hidden(x_i[p_i : p_i + n_scored] | KV(x_i[:p_i]));  Δ added at suffix position 0

  Below row i's layer ℓ_i nothing depends on Δ either: the suffix runs once
  without Δ, keeps the residual entering block ℓ_i, and each step runs row i
  through blocks ℓ_i .. L − 1 only (:mod:`headsteer.fitting.from_layer`; a batch
  of fits at many layers grows block by block as rows join at their layer).
  The cost per step is the suffix through the layers from Δ's on plus one read of
  the unembedding for ``n_scored`` rows, instead of every position's logits and
  their gradient. How each kind of model (HookedTransformer, TransformerBridge)
  runs with a KV cache, and where its unembedding is, is :mod:`headsteer.backends`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headsteer.backends import KVCache, model_kind
from headsteer.fitting.from_layer import FromLayer, plan
from headsteer.fitting.linear_kernel import plain_linears, skinny_linears
from headsteer.fitting.losses import Scored
from headsteer.fitting.unembed import FinalHidden
from headsteer.hooks import AtIndex, added_hooks, delta_hooks
from headsteer.prompts import TokenBatch


@runtime_checkable
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


@dataclass
class PrefixCache:
    """The Δ-independent part of one batch, computed once: the prefixes' KV cache and each row's suffix."""

    cache: KVCache  # the prefixes' keys and values; each suffix runs against it and leaves it as it was
    suffix_ids: Int[Tensor, "batch n_scored"]
    suffix_mask: Int[Tensor, "batch n_scored"]


class PrefixCachedForward:
    """``fn(model, layer, tokens, delta, n_scored) -> logits``, caching each batch's prefix.

    Prefixes are cached by the identity of the model and of ``tokens`` (a fit
    calls it with the same batches every step) and the rows' layers; call
    :meth:`clear` to drop them. ``from_layer`` (on by default): each row runs
    from its own layer (:mod:`~headsteer.fitting.from_layer`); off, or where that
    plan does not reproduce the model's forward, every block runs.
    ``bf16_weights`` (off by default): the NLL reads a bf16 copy of the
    unembedding (:attr:`~headsteer.fitting.unembed.FinalHidden.low_precision`: on a CPU it is
    widened to fp32 as it is read, on a GPU the products run in bf16), and the
    blocks run by hand read bf16 copies of their linear layers' weights where the CPU
    kernel runs them (:meth:`~headsteer.fitting.fused_block.FusedBlock.in_bf16`: q, k and v
    stacked in one copy, gate and up in another); each copy is made once. Half the memory
    traffic of those weights, not exact (its measured effect on loss, Δ and held-out accuracy:
    ``benchmarks/bf16_weights.py``, RESEARCH.md).
    """

    def __init__(self, bf16_weights: bool = False, from_layer: bool = True) -> None:
        self.bf16_weights = bf16_weights
        self.from_layer = from_layer
        # (model, tokens, n_scored, layers) -> (tokens, kept alive; the plan, or the prefix where there is none)
        self._prefixes: dict[tuple, tuple[TokenBatch, FromLayer | PrefixCache]] = {}
        self._bf16: dict[tuple, tuple[tuple[Tensor, ...], Tensor]] = {}  # storages -> (weights, their bf16 copy)

    def clear(self) -> None:
        self._prefixes.clear()
        self._bf16.clear()

    def _prepared(self, model, tokens: TokenBatch, n_scored: int, layers: Tensor) -> FromLayer | PrefixCache:
        key = (id(model), id(tokens), n_scored, tuple(layers.tolist()))
        if key not in self._prefixes:  # the entry keeps ``tokens`` alive, so its id stays unique
            prepared: FromLayer | PrefixCache | None = None
            if self.from_layer:
                order = torch.sort(layers, stable=True).indices  # rows of one layer together, lowest layer first
                prefix = build_prefix(model, tokens.select(order), n_scored)
                prepared = plan(model, prefix.cache, prefix.suffix_ids, prefix.suffix_mask, layers, order)
                if prepared is None and torch.equal(order, torch.arange(len(order))):
                    prepared = prefix  # no plan, but the rows were in layer order already: the batch's own prefix
                if isinstance(prepared, FromLayer) and self.bf16_weights:  # checked against the forward in fp32 first
                    fused = {b: block.in_bf16(self._bf16_copy) for b, block in prepared.fused.items()}
                    prepared = replace(prepared, fused=fused)
            self._prefixes[key] = (tokens, prepared or build_prefix(model, tokens, n_scored))
        return self._prefixes[key][1]

    def __call__(
        self,
        model,
        layer: int | Int[Tensor, " batch"],
        tokens: TokenBatch,
        delta: Float[Tensor, "*rows n_heads d_head"],
        n_scored: int,
    ) -> FinalHidden:
        layers = torch.full((len(tokens),), layer) if isinstance(layer, int) else layer.cpu()
        prepared = self._prepared(model, tokens, n_scored, layers)
        if isinstance(prepared, FromLayer):
            per_row = delta.expand(len(tokens), *delta.shape[-2:]) if delta.ndim == 2 else delta
            scored = FinalHidden(prepared.hidden(model, per_row), *model_kind(model).unembedding(model))
        else:
            scored = run_suffix(model, prepared, layer, delta)
        if not self.bf16_weights:
            return scored
        weight = self._bf16_copy((scored.weight,))
        return FinalHidden(scored.hidden, weight, scored.bias, scored.softcap, low_precision=True)

    def _bf16_copy(self, weights: tuple[Tensor, ...]) -> Tensor:
        """One bf16 copy of frozen weights ``[out_i, in]`` stacked along their outputs, made on first use. Keyed by
        their storages: the unembedding comes as a fresh view each step; the entry keeps the storages alive, so
        their addresses stay unique."""
        key = tuple((w.data_ptr(), tuple(w.shape), w.dtype) for w in weights)
        if key not in self._bf16:
            rows, device = sum(w.shape[0] for w in weights), weights[0].device
            copy = torch.empty(rows, *weights[0].shape[1:], dtype=torch.bfloat16, device=device)
            for part, weight in zip(copy.split([w.shape[0] for w in weights]), weights, strict=True):
                part.copy_(weight.detach())  # rounded to nearest, as Tensor.to rounds
            self._bf16[key] = (weights, copy)
        return self._bf16[key][1]


def run_suffix(
    model,
    prefix: PrefixCache,
    layer: int | Int[Tensor, " batch"] | None = None,
    delta: Float[Tensor, "*rows n_heads d_head"] | None = None,
) -> FinalHidden:
    """The suffix of every row against its prefix cache, Δ added at ``layer``, suffix position 0 (neither: no Δ)."""
    if (layer is None) != (delta is None):
        raise ValueError("run_suffix: give both layer and delta, or neither")
    at_first = torch.zeros(len(prefix.suffix_ids), dtype=torch.long)
    hooks = [] if layer is None or delta is None else delta_hooks(layer, delta, AtIndex(at_first, prompt_len=1))
    kind = model_kind(model)
    # Every block runs on a few rows: its linear layers through the CPU kernel where it applies.
    with added_hooks(model, hooks), skinny_linears(plain_linears(model.blocks)):
        hidden = kind.final_hidden(model, prefix.cache, prefix.suffix_ids, prefix.suffix_mask, keep=False)
    return FinalHidden(hidden, *kind.unembedding(model))


@torch.no_grad()
def build_prefix(model, tokens: TokenBatch, n_scored: int, repeats: int = 1) -> PrefixCache:
    """Split each row at its last prompt token; run the left-padded prefixes once with a KV cache.

    Rows with the same prefix share one run (a batch of many fits on the same training
    pairs, e.g. every layer and resample of a head map, runs each distinct prompt once).
    With ``repeats`` > 1 every row is repeated that many times (row i becomes
    rows i·repeats .. i·repeats + repeats − 1) after its prefix is computed once.
    """
    ids, mask, last = tokens.input_ids, tokens.attention_mask, tokens.last_index
    starts = [int(s) for s in last]
    if min(starts) < 1:
        raise ValueError("every prompt needs at least one token before its last one to use the prefix cache")
    width = max(starts)
    prefix_ids = torch.full((len(tokens), width), int(ids[0, 0]), dtype=torch.long)
    prefix_mask = torch.zeros((len(tokens), width), dtype=torch.long)
    suffix_ids = torch.zeros((len(tokens), n_scored), dtype=torch.long)
    suffix_mask = torch.zeros((len(tokens), n_scored), dtype=torch.long)
    for i, s in enumerate(starts):
        real = mask[i, :s].bool()
        prefix_ids[i, width - int(real.sum()) :] = ids[i, :s][real]
        prefix_mask[i, width - int(real.sum()) :] = 1
        span = ids[i, s : s + n_scored]
        suffix_ids[i, : len(span)] = span
        suffix_mask[i, : len(span)] = mask[i, s : s + n_scored]
    # Identical rows (same ids, same padding) have identical prefixes: run each distinct one once.
    distinct, row_of = torch.unique(torch.cat([prefix_ids, prefix_mask], dim=1), dim=0, return_inverse=True)
    # The prefix needs no Δ and no logits.
    cache = model_kind(model).prefill(model, distinct[:, :width], distinct[:, width:])
    if repeats > 1:
        row_of = row_of.repeat_interleave(repeats)
        suffix_ids, suffix_mask = (t.repeat_interleave(repeats, dim=0) for t in (suffix_ids, suffix_mask))
    cache.keep_rows(row_of)  # each row's prefix keys/values, copied from its distinct run
    device = model.cfg.device
    return PrefixCache(cache, suffix_ids.to(device), suffix_mask.to(device))


@torch.no_grad()
def shared_prefix_final_hidden(model, shared_ids: list[int], suffixes: TokenBatch) -> FinalHidden:
    """Final hidden state at each row's last token of ``shared + suffix_i``, the shared part run once.

    The right-padded suffixes continue one KV cache of ``shared_ids``
    (repeated per row); causal attention keeps every real token from seeing
    the padding after it, so each row equals a full forward of its own prompt
    (see :func:`headsteer.prompts.encode_continuations`). For many prompts
    behind one long context, e.g. few-shot demonstrations.
    """
    kind = model_kind(model)
    rows = len(suffixes)
    shared = torch.tensor([shared_ids])
    cache = kind.prefill(model, shared, torch.ones_like(shared))
    cache.repeat_rows(rows)
    hidden = kind.final_hidden(model, cache, suffixes.input_ids, suffixes.attention_mask, keep=False)
    last = hidden[torch.arange(rows, device=hidden.device), suffixes.last_index.to(hidden.device)]
    return FinalHidden(last[:, None], *kind.unembedding(model))
