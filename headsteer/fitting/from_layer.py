"""The suffix run from each row's own layer: what lies below Δ's layer is computed once, not every step.

Row i's Δ enters at ``blocks.{ℓ_i}.attn.hook_z``, so the residual stream entering
block ℓ_i does not depend on Δ. A :class:`FromLayer` plan runs the suffix once
without Δ, keeps each row's residual x_i entering its block ℓ_i, and from then
on runs only blocks ℓ_i .. L − 1 of row i. Rows are sorted by layer, so the rows
with ℓ_i ≤ b are the first n_b: block b runs on them, and the rows of layer b join
the batch there::

    r ← block_b([r; x_join(b)])  on rows 0 .. n_b − 1, for b = min ℓ .. L − 1;   h = final_norm(r)

Each block is called as the model's own forward called it in that first run
(attention masks, position embeddings, the prefix's KV cache; each narrowed to
its rows): nothing here knows an architecture. The plan is checked once: run
without Δ, it must give that first run's final hidden states (up to summation
order), or it is not used and the caller runs every block (:func:`plan`
returns None, with a warning). On a TransformerBridge, the blocks' components that carry no
hook are stepped around (:mod:`headsteer.fitting.bare_bridge`), and a hook-free block of a known
architecture runs as one hand-written step that adds Δ itself (:mod:`headsteer.fitting.fused_block`): the plan is
checked with both first, then with the components stepped around only, then with every component.

In a fit this is the same values and gradients as running every block; the work
saved is the forward below ℓ (and, for a batch of fits at many layers, the
backward of each row below its own layer, which a shared batch tensor would run).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from headsteer.backends import KVCache, model_kind
from headsteer.fitting.bare_bridge import Slot, bare_components, bridge_slots
from headsteer.fitting.fused_block import FusedBlock, fused_blocks
from headsteer.fitting.linear_kernel import plain_linears, skinny_linears
from headsteer.hooks import AtIndex, Hook, added_hooks, delta_hooks

__all__ = ["FromLayer", "plan"]


@dataclass
class FromLayer:
    """How to run a batch's suffix block by block from each row's layer (rows in ``order``)."""

    cache: KVCache  # the prefixes' keys and values, rows in ``order``
    order: Int[Tensor, " rows"]  # row k of the plan is row order[k] of the batch
    back: Int[Tensor, " rows"]  # row i of the batch is row back[i] of the plan
    rows_at: list[int]  # rows run by block b: those whose layer is ≤ b (all rows below the first layer: never run)
    # block b -> (the first row that joins there, the residual entering b of rows first .. rows_at[b] − 1)
    joins: dict[int, tuple[int, Float[Tensor, "join n_scored d_model"]]]
    calls: dict[int, tuple[tuple, dict]]  # block b -> its other arguments, narrowed to its rows
    linears: tuple[nn.Linear, ...]  # the linear layers of the blocks that run, found once
    bare: tuple[Slot, ...]  # a bridge's components in those blocks, stepped around where hook-free (may be none)
    fused: dict[int, FusedBlock]  # block b -> its hand-written step, used where the block is hook-free (may be none)

    def hidden(
        self, model, delta: Float[Tensor, "rows n_heads d_head"] | None
    ) -> Float[Tensor, "rows n_scored d_model"]:
        """Final hidden states of the suffix, Δ (rows in the batch's order) at each row's layer; None: no Δ."""
        kind = model_kind(model)
        dtype = next(iter(self.joins.values()))[1].dtype
        # The blocks run by hand this step: those hook-free now (before Δ's hooks), called with keywords only.
        by_hand = {b: f for b, f in self.fused.items() if not self.calls[b][0] and f.applies(dtype)}
        hooks: list[Hook] = []
        deltas: dict[int, Tensor] = {}  # Δ of the blocks run by hand, which add it themselves
        if delta is not None:
            delta = delta[self.order.to(delta.device)]
            for block, (start, _) in self.joins.items():
                rows = self.rows_at[block]
                # Block b's batch is rows 0 .. n_b − 1; Δ goes to the rows that joined at b (the last ones).
                padded = torch.cat([delta.new_zeros(start, *delta.shape[1:]), delta[start:rows]])
                if block in by_hand and padded.dtype == dtype:
                    deltas[block] = padded
                else:
                    by_hand.pop(block, None)
                    hooks += delta_hooks(block, padded, AtIndex(torch.zeros(rows, dtype=torch.long), prompt_len=1))
        residual: Tensor | None = None
        # The other blocks run as the model runs them, on a few rows: their linear layers through the CPU kernel
        # where it applies, a bridge's components without hooks (all but Δ's attention, as a rule) out of the way.
        by_hand_ids = frozenset().union(*(f.module_ids for f in by_hand.values()))
        linears = [m for m in self.linears if id(m) not in by_hand_ids]
        bare = [s for s in self.bare if id(s.parent) not in by_hand_ids]
        with (  # Δ's hooks first: they count for bare_components
            added_hooks(model, hooks),
            kind.narrowed(self.cache, self.rows_at),
            skinny_linears(linears),
            bare_components(bare),
        ):
            for block in range(min(self.joins), len(self.rows_at)):
                if block in self.joins:
                    join = self.joins[block][1]
                    residual = join if residual is None else torch.cat([residual, join])
                assert residual is not None
                args, kwargs = self.calls[block]
                if block in by_hand:
                    residual = by_hand[block](residual, kwargs, deltas.get(block))
                else:
                    out = model.blocks[block](residual, *args, **kwargs)
                    residual = out[0] if isinstance(out, tuple) else out
        assert residual is not None
        return kind.final_norm(model, residual)[self.back.to(residual.device)]


@torch.no_grad()
def plan(
    model,
    cache: KVCache,
    suffix_ids: Int[Tensor, "rows n_scored"],
    suffix_mask: Int[Tensor, "rows n_scored"],
    layer: Int[Tensor, " rows"],
    order: Int[Tensor, " rows"],
) -> FromLayer | None:
    """Run the suffix once, keeping each block's inputs; None where the block-by-block run does not reproduce it.

    ``cache`` holds the prefixes of the rows already in ``order`` (``layer[order]`` ascending),
    as do ``suffix_ids`` and ``suffix_mask``; ``layer`` is in the batch's order.
    """
    kind = model_kind(model)
    n_rows, n_layers = len(order), model.cfg.n_layers
    sorted_layers = layer[order].tolist()
    if sorted_layers != sorted(sorted_layers):
        raise ValueError("from_layer.plan: rows must come sorted by layer")
    first = sorted_layers[0]
    rows_at = [sum(1 for ell in sorted_layers if ell <= b) if b >= first else n_rows for b in range(n_layers)]
    starts = {b: rows_at[b - 1] if b > first else 0 for b in set(sorted_layers)}
    seen: dict[int, tuple[tuple, dict]] = {}

    def keep(block: int):
        def hook(module, args, kwargs):
            seen[block] = (args, kwargs)

        return hook

    handles = [model.blocks[b].register_forward_pre_hook(keep(b), with_kwargs=True) for b in range(first, n_layers)]
    try:
        reference = kind.final_hidden(model, cache, suffix_ids, suffix_mask, keep=False)
    finally:
        for handle in handles:
            handle.remove()
    if sorted(seen) != list(range(first, n_layers)) or not all(len(seen[b][0]) >= 1 for b in seen):
        _unused("the model's forward does not call each block once with the hidden state first")
        return None
    joins = {b: (start, seen[b][0][0][start : rows_at[b]].clone()) for b, start in starts.items()}
    calls = {
        b: (_narrow(seen[b][0][1:], n_rows, rows_at[b]), _narrow(seen[b][1], n_rows, rows_at[b]))
        for b in range(first, n_layers)
    }
    back = torch.empty_like(order)
    back[order] = torch.arange(n_rows)
    blocks = [model.blocks[b] for b in range(first, n_layers)]
    linears, slots = plain_linears(blocks), bridge_slots(blocks)
    fused = fused_blocks((b, model.blocks[b]) for b in range(first, n_layers))
    tolerance = torch.finfo(reference.dtype).eps ** 0.5
    # The fastest way that reproduces the forward: hand-written blocks and a bridge's components stepped around,
    # the components stepped around only, every component.
    ways: list[tuple[tuple[Slot, ...], dict[int, FusedBlock]]] = [((), {})]
    if slots:
        ways.insert(0, (slots, {}))
    if fused:
        ways.insert(0, (slots, fused))
    for bare, fusing in ways:
        result = FromLayer(cache, order, back, rows_at, joins, calls, linears, bare, fusing)
        replayed = result.hidden(model, None)[order.to(reference.device)]
        if torch.allclose(replayed, reference, rtol=tolerance, atol=tolerance * float(reference.abs().max())):
            return result
    _unused("running its blocks one by one does not reproduce its forward")
    return None


def _narrow(value, n_rows: int, rows: int):
    """``value`` with every batch-first tensor (2 dims or more, ``n_rows`` long) cut to its first ``rows`` rows."""
    if isinstance(value, Tensor):
        return value[:rows] if value.ndim >= 2 and value.shape[0] == n_rows else value
    if isinstance(value, tuple):
        return tuple(_narrow(v, n_rows, rows) for v in value)
    if isinstance(value, list):
        return [_narrow(v, n_rows, rows) for v in value]
    if isinstance(value, dict):
        return {k: _narrow(v, n_rows, rows) for k, v in value.items()}
    return value


def _unused(why: str) -> None:
    warnings.warn(f"headsteer runs every block of this model in each fit step: {why}", stacklevel=3)
