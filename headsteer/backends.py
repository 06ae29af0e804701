"""What differs between the two model kinds headsteer takes, in one place; nothing else checks the kind.

* ``TransformerBridge`` (TransformerLens 3.x and 4.x): a Hugging Face model whose
  modules carry TransformerLens' hooks. A run with a KV cache goes through the
  Hugging Face base model (``model.original_model.base_model``) with a
  ``transformers`` cache and explicit position ids, so the hooks fire inside it;
  the unembedding is the Hugging Face output embedding, the soft cap the config's
  ``final_logit_softcapping``.
* ``HookedTransformer`` (TransformerLens 3.x; 4.0 removed it): TransformerLens' own
  implementation of the checkpoint. A run with a KV cache goes through
  ``model(ids, attention_mask=..., past_kv_cache=..., stop_at_layer=n_layers)`` with
  a ``TransformerLensKeyValueCache`` (which keeps the attention mask of what it
  holds); the final hidden state is ``ln_final`` of the residual stream after the
  last block, the unembedding ``W_U``/``b_U``, the soft cap ``cfg.output_logits_soft_cap``.

Everything else both kinds share: hook names (``blocks.{l}.attn.hook_z``,
``blocks.0.hook_resid_pre``, ...), ``model.hooks(fwd_hooks=...)``, ``model(ids,
attention_mask=mask)`` for a full forward, a BOS-prepending ``model.tokenizer``,
``model.cfg`` (``n_layers``, ``n_heads``, ``d_head``, ``d_model``, ``device``: where
the embedding is), ``W_E`` and ``blocks[l].attn.W_O``. The rest of headsteer is
written once against that surface and :func:`model_kind`.

Positions: rows are padded with a mask; a real token's position is the number of
real tokens before it in its row, ``p = cumsum(mask) − 1`` over everything run so
far (the cache's mask, then the new one). The HookedTransformer derives exactly
that from the mask; the bridge is given it as ``position_ids``. So a row's values
do not depend on how much padding it got, nor on which kind runs it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headsteer.errors import ConfigError

if TYPE_CHECKING:  # imported where a model runs, not with the package
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformers import Cache

BRIDGE = "TransformerBridge"
HOOKED = "HookedTransformer"


class Unembedding(NamedTuple):
    """The map from the final (normalised) hidden state h to the logits: l = c·tanh((W h + b) / c), or W h + b."""

    weight: Float[Tensor, "vocab d_model"]
    bias: Float[Tensor, " vocab"] | None
    softcap: float | None  # c; None where the logits are not soft-capped


@runtime_checkable
class KVCache(Protocol):
    """Keys and values of every position run so far, for each row of a batch."""

    def repeat_rows(self, times: int) -> None:
        """Row i becomes rows i·times .. i·times + times − 1 (each a copy)."""
        ...

    def keep_rows(self, rows: Int[Tensor, " kept"]) -> None:
        """Keep only ``rows``, in that order (drop rows that finished generating; repeat one that rows share)."""
        ...

    def __len__(self) -> int:
        """Positions whose keys and values it holds (real and padding)."""
        ...


@runtime_checkable
class ModelKind(Protocol):
    """How to run one kind of model with a KV cache, and where its unembedding is."""

    name: str

    def prefill(self, model, ids: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"]) -> KVCache:
        """Run left-padded ``ids`` (no logits) and keep their keys and values."""
        ...

    def final_hidden(
        self,
        model,
        cache: KVCache,
        ids: Int[Tensor, "batch new"],
        mask: Int[Tensor, "batch new"],
        keep: bool,
    ) -> Float[Tensor, "batch new d_model"]:
        """Final normalised hidden states of ``ids`` continuing ``cache`` (hooks fire as in a full forward).

        ``keep``: the cache then holds ``ids`` too; else it is left as it was
        (the fitter runs many suffixes against one prefix).
        """
        ...

    def narrowed(self, cache: KVCache, rows_per_block: Sequence[int]) -> AbstractContextManager[None]:
        """Inside: block b attends to the cached keys and values of the first ``rows_per_block[b]`` rows only.

        For running each block of ``model.blocks`` by hand on a batch that grows
        from block to block (rows join at their own layer); what the blocks add
        to the cache is dropped on leaving, as with ``keep=False``.
        """
        ...

    def final_norm(self, model, residual: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """The normalisation between the last block's output and the unembedding."""
        ...

    def unembedding(self, model) -> Unembedding: ...

    def hugging_face_weights(self, model) -> tuple[object, dict[str, Tensor]]:
        """The Hugging Face config and state dict of the model (names as ``transformers`` writes them)."""
        ...


def model_kind(model) -> ModelKind:
    """The kind of ``model``; anything but a HookedTransformer or a TransformerBridge is a ConfigError."""
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, TransformerBridge):
        return _Bridge()
    hooked = hooked_transformer_class()
    if hooked is not None and isinstance(model, hooked):
        return _Hooked()
    supported = "a TransformerBridge" + (" or a HookedTransformer" if hooked is not None else "")
    raise ConfigError(
        f"headsteer takes a TransformerLens model ({supported}), got {type(model).__name__}; "
        "wrap a Hugging Face model with headsteer.wrap_model(hf_model, tokenizer, name)"
    )


def hooked_transformer_class() -> type | None:
    """``transformer_lens.HookedTransformer`` where the installed TransformerLens has it (3.x), else None."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:  # TransformerLens 4.x: removed (its module raises ImportError on access)
        return None
    return HookedTransformer


def positions_of(mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """p = cumsum(mask) − 1: each real token's index among its row's real tokens (padding: clamped to 0)."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


# ---- TransformerBridge ----------------------------------------------------------------------------
@dataclass
class _BridgeCache:
    """A ``transformers`` cache and the mask of the positions it holds."""

    cache: Cache
    mask: Int[Tensor, "batch cached"]

    def repeat_rows(self, times: int) -> None:
        self.cache.batch_repeat_interleave(times)
        self.mask = self.mask.repeat_interleave(times, dim=0)

    def keep_rows(self, rows: Int[Tensor, " kept"]) -> None:
        self.cache.batch_select_indices(rows.to(self.mask.device))
        self.mask = self.mask[rows.to(self.mask.device)]

    def __len__(self) -> int:
        return self.cache.get_seq_length()


class _Bridge:
    name = BRIDGE

    def prefill(self, model, ids: Tensor, mask: Tensor) -> KVCache:
        device = model.cfg.device
        ids, mask = ids.to(device), mask.to(device)
        cache = model.original_model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=positions_of(mask), use_cache=True
        ).past_key_values
        _check_key_value_layers(cache)
        return _BridgeCache(cache, mask)

    def final_hidden(self, model, cache: KVCache, ids: Tensor, mask: Tensor, keep: bool) -> Tensor:
        assert isinstance(cache, _BridgeCache)
        full = torch.cat([cache.mask, mask.to(cache.mask.device)], dim=1)
        saved = None if keep else _layer_states(cache.cache)
        try:
            hidden = model.original_model.base_model(
                input_ids=ids.to(cache.mask.device),
                attention_mask=full,
                position_ids=positions_of(full)[:, -ids.shape[1] :],
                past_key_values=cache.cache,
                use_cache=True,
            ).last_hidden_state
        finally:
            if saved is not None:  # the suffix's keys/values (part of the graph) leave the cache, not the graph
                _restore_layer_states(cache.cache, saved)
        if keep:
            cache.mask = full
        return hidden

    @contextmanager
    def narrowed(self, cache: KVCache, rows_per_block: Sequence[int]) -> Iterator[None]:
        assert isinstance(cache, _BridgeCache)
        saved = _layer_states(cache.cache)
        try:
            for (keys, values, _), layer, rows in zip(saved, cache.cache.layers, rows_per_block):
                layer.keys, layer.values = keys[:rows], values[:rows]  # type: ignore[union-attr]
            yield
        finally:
            _restore_layer_states(cache.cache, saved)

    def final_norm(self, model, residual: Tensor) -> Tensor:
        return model.ln_final(residual)  # the bridge's name for the Hugging Face model's final norm

    def unembedding(self, model) -> Unembedding:
        hf = model.original_model
        head = hf.get_output_embeddings()
        bias = getattr(head, "bias", None)
        cap = getattr(hf.config.get_text_config(), "final_logit_softcapping", None)
        return Unembedding(
            head.weight.detach(), bias.detach() if isinstance(bias, Tensor) else None, float(cap) if cap else None
        )

    def hugging_face_weights(self, model) -> tuple[object, dict[str, Tensor]]:
        hf = model.original_model
        # The bridge wraps each Hugging Face module it hooks; its own weights sit one level down.
        return hf.config, {k.replace("._original_component", ""): v for k, v in hf.state_dict().items()}


def _check_key_value_layers(cache) -> None:
    """Every block keeps keys and values; a block of another kind (e.g. linear attention) has no prefix to keep."""
    from transformers.cache_utils import CacheLayerMixin

    if not all(isinstance(layer, CacheLayerMixin) for layer in cache.layers):
        raise ConfigError(
            "the prefix-cached forward needs a key/value cache in every block; this model has blocks of another "
            "kind: fit with the naive forward (--no-fast)"
        )
    if any(layer.keys is None for layer in cache.layers):
        from importlib.metadata import version

        raise ConfigError(
            f"the model's forward left its key/value cache empty: TransformerLens {version('transformer-lens')} does "
            f"not pass the cache to transformers {version('transformers')}'s layers; install the versions headsteer's "
            "pyproject.toml allows"
        )


def _layer_states(cache) -> list[tuple[Tensor, Tensor, int | None]]:
    """Each layer's keys, values and (sliding-window layers) the count of positions it has seen."""
    return [(layer.keys, layer.values, getattr(layer, "cumulative_length", None)) for layer in cache.layers]


def _restore_layer_states(cache, saved: list[tuple[Tensor, Tensor, int | None]]) -> None:
    for layer, (keys, values, seen) in zip(cache.layers, saved):
        layer.keys, layer.values = keys, values
        if seen is not None:
            layer.cumulative_length = seen


# ---- HookedTransformer ----------------------------------------------------------------------------
@dataclass
class _HookedCache:
    """A ``TransformerLensKeyValueCache`` (it keeps the mask of what it holds)."""

    cache: TransformerLensKeyValueCache

    def repeat_rows(self, times: int) -> None:
        self._map(lambda t: t.repeat_interleave(times, dim=0))

    def keep_rows(self, rows: Int[Tensor, " kept"]) -> None:
        self._map(lambda t: t[rows.to(t.device)])

    def _map(self, fn) -> None:
        cache = self.cache
        for entry in cache.entries:
            entry.past_keys, entry.past_values = fn(entry.past_keys), fn(entry.past_values)
        cache.previous_attention_mask = fn(cache.previous_attention_mask)

    def __len__(self) -> int:
        return self.cache.entries[0].past_keys.shape[1]


class _Hooked:
    name = HOOKED

    def prefill(self, model, ids: Tensor, mask: Tensor) -> KVCache:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, ids.shape[0])
        model(ids, attention_mask=mask, past_kv_cache=cache, return_type=None)
        return _HookedCache(cache)

    def final_hidden(self, model, cache: KVCache, ids: Tensor, mask: Tensor, keep: bool) -> Tensor:
        assert isinstance(cache, _HookedCache)
        tl_cache = cache.cache
        if not keep:
            tl_cache.freeze()  # a frozen cache reads its entries but appends nothing
        try:
            residual = model(ids, attention_mask=mask, past_kv_cache=tl_cache, stop_at_layer=model.cfg.n_layers)
        finally:
            if not keep:
                tl_cache.unfreeze()
        # forward() applies ln_final only on the way to the logits, which stop_at_layer skips.
        return self.final_norm(model, residual)

    @contextmanager
    def narrowed(self, cache: KVCache, rows_per_block: Sequence[int]) -> Iterator[None]:
        assert isinstance(cache, _HookedCache)
        entries = cache.cache.entries
        saved = [(entry.past_keys, entry.past_values) for entry in entries]
        cache.cache.freeze()  # a frozen entry reads its keys and values but appends nothing
        try:
            for entry, rows in zip(entries, rows_per_block):
                entry.past_keys, entry.past_values = entry.past_keys[:rows], entry.past_values[:rows]
            yield
        finally:
            for entry, (keys, values) in zip(entries, saved):
                entry.past_keys, entry.past_values = keys, values
            cache.cache.unfreeze()

    def final_norm(self, model, residual: Tensor) -> Tensor:
        return residual if model.cfg.normalization_type is None else model.ln_final(residual)

    def unembedding(self, model) -> Unembedding:
        cap = float(model.cfg.output_logits_soft_cap)
        return Unembedding(model.W_U.detach().T, model.b_U.detach(), cap if cap > 0 else None)

    def hugging_face_weights(self, model) -> tuple[object, dict[str, Tensor]]:
        raise ConfigError(
            "this baseline trains a copy of the Hugging Face model, which a HookedTransformer does not hold "
            "(its weights were converted to TransformerLens' layout); run it on a TransformerBridge "
            "(headsteer.load_model or headsteer.wrap_model)"
        )
