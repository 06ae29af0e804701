"""The additive hook on ``blocks.{ℓ}.attn.hook_z`` and the context that owns it.

Hook protocol: TransformerLens' ``fn(act, hook) -> act``. The hook returns a
new tensor (never edits ``act`` in place)::

    z'[b, p, h, :] = z[b, p, h, :] + 1[p = last_b] · Δ[b?, h, :]

where ``last_b`` is row b's last prompt token. Which pass is a prompt pass:

* with explicit ``last_index`` (from headsteer's own tokenisation, any
  padding side) a pass of ``prompt_len`` positions or more holds the prompt and
  gets Δ at ``last_index``; a shorter pass continues a KV cache (generated
  tokens) and is left alone;
* without positions, Δ goes at the final position of every pass of more
  than one token, and one-token passes (KV-cache decoding) are left alone.
  This fits unpadded or left-padded prompts; pass positions otherwise.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Protocol, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor


def hook_z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def check_layer(model, layer: int) -> str:
    """The hook name for ``layer``, after checking the layer exists and the hook is real."""
    n_layers = model.cfg.n_layers
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer!r} is out of range: this model has layers 0..{n_layers - 1}")
    name = hook_z_name(layer)
    if name not in model.hook_dict:
        raise ValueError(f"hook {name!r} does not exist on this model; cannot intervene on per-head outputs")
    return name


class Steerer(Protocol):
    """What steers a model at the last prompt token: an Intervention, a function vector, ..."""

    def check_fits(self, model) -> None: ...

    def hook(self, last_index: Tensor | None, prompt_len: int | None) -> tuple[str, Callable]: ...


class PromptEndAdd:
    """``fn(act, hook) -> act`` adding ``delta`` at each row's last prompt token.

    The activation is ``[batch, pos, *site]``: ``site`` is ``(n_heads, d_head)``
    for ``hook_z`` (the default, ``site_ndim=2``) or ``(d_model,)`` for a
    residual-stream hook (``site_ndim=1``). ``delta`` is ``site``-shaped (one
    vector for all rows) or ``[batch, *site]`` (one per row).
    """

    def __init__(
        self,
        delta: Float[Tensor, "*rows ..."],
        last_index: Int[Tensor, " batch"] | None = None,
        prompt_len: int | None = None,
        site_ndim: int = 2,
    ):
        if delta.ndim not in (site_ndim, site_ndim + 1):
            site = "[n_heads, d_head]" if site_ndim == 2 else f"a {site_ndim}-d site"
            raise ValueError(f"Δ must be {site} or [batch, ...] of it, got {tuple(delta.shape)}")
        if (last_index is None) != (prompt_len is None):
            raise ValueError("give both last_index and prompt_len, or neither")
        self.delta = delta
        self.last_index = last_index
        self.prompt_len = prompt_len
        self.site_ndim = site_ndim

    def __call__(self, act: Float[Tensor, "batch pos ..."], hook) -> Tensor:
        site = tuple(self.delta.shape[-self.site_ndim :])
        if act.ndim != 2 + self.site_ndim or tuple(act.shape[2:]) != site:
            raise ValueError(
                f"{getattr(hook, 'name', 'hook')}: activation {tuple(act.shape)} does not fit Δ "
                f"{tuple(self.delta.shape)}; expected [batch, pos, {', '.join(map(str, site))}]"
            )
        batch, pos = act.shape[:2]
        if self.last_index is None:
            if pos == 1:
                return act
            index = torch.full((batch,), pos - 1, device=act.device)
        else:
            if pos < self.prompt_len:
                return act
            index = self.last_index.to(act.device)
        onehot = torch.nn.functional.one_hot(index, pos).to(act.dtype)
        delta = self.delta.to(device=act.device, dtype=act.dtype)
        if delta.ndim == self.site_ndim:
            delta = delta.unsqueeze(0)
        return act + onehot.reshape(batch, pos, *[1] * self.site_ndim) * delta[:, None]


def delta_hooks(
    layer: int | Int[Tensor, " batch"],
    delta: Float[Tensor, "*rows n_heads d_head"],
    last_index: Int[Tensor, " batch"] | None = None,
    prompt_len: int | None = None,
) -> list[tuple[str, PromptEndAdd]]:
    """Hooks adding Δ at one layer, or at each row's own layer (``layer`` per row, Δ per row)."""
    if isinstance(layer, int):
        return [(hook_z_name(layer), PromptEndAdd(delta, last_index, prompt_len))]
    if delta.ndim != 3 or delta.shape[0] != layer.shape[0]:
        raise ValueError(f"per-row layers need a per-row Δ [batch, n_heads, d_head], got {tuple(delta.shape)}")
    hooks = []
    for value in layer.unique().tolist():
        on = (layer == value).to(delta.dtype)[:, None, None]
        hooks.append((hook_z_name(int(value)), PromptEndAdd(delta * on, last_index, prompt_len)))
    return hooks


@contextmanager
def added_hooks(model, hooks: Sequence[tuple[str, PromptEndAdd]]) -> Iterator[None]:
    """Attach ``hooks`` for the body of the ``with``; exactly these are removed in ``finally``.

    Uses the bridge's own scoped context, which removes the handles it added
    and nothing else (hooks attached before stay).
    """
    for name, _ in hooks:
        if name not in model.hook_dict:
            raise ValueError(f"hook {name!r} does not exist on this model")
    with model.hooks(fwd_hooks=list(hooks)):
        yield


@torch.no_grad()
def last_token_activations(
    model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], names: Sequence[str]
) -> list[Tensor]:
    """Each named activation at the final position of left-padded rows (read, never changed)."""
    store: dict[str, Tensor] = {}

    def keep(name: str):  # keyed by the name asked for (a bridge hook may carry an alias)
        def fn(act, hook):
            store[name] = act[:, -1].detach().clone()
            return act
        return fn

    device = model.cfg.device
    with added_hooks(model, [(name, keep(name)) for name in names]):
        model(input_ids.to(device), attention_mask=attention_mask.to(device))
    return [store[name].cpu() for name in names]
