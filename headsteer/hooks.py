"""The additive hook on ``blocks.{ℓ}.attn.hook_z`` and the context that owns it.

Hook protocol: TransformerLens' ``fn(act, hook) -> act``. The hook returns a
new tensor (never edits ``act`` in place)::

    z'[b, p, h, :] = z[b, p, h, :] + 1[p = last_b] · Δ[b?, h, :]

where ``last_b`` is row b's last prompt token. Δ belongs to that token only,
however the model is run; a :class:`PromptPositions` says, per forward pass,
where it goes (or that the pass gets none):

* :class:`AtIndex` — explicit positions from headsteer's own tokenisation
  (any padding side): a pass of ``prompt_len`` positions or more holds the
  prompt and gets Δ at ``last_index``; a shorter pass continues a KV cache
  (generated tokens) and is left alone.
* :class:`PromptTracker` — for passes headsteer did not tokenise
  (``with iv.applied(model): model.generate(...)``): a hook on the first
  block's input recognises the prompt pass (Δ at its final position), a pass that
  re-runs the prompt plus generated tokens without a KV cache (Δ again at the
  prompt's last position, not at the new final one) and a one-token KV-cache
  step (no Δ: the cached keys and values already carry it). This fits
  unpadded or left-padded prompts; give explicit positions otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headsteer.backends import model_kind
from headsteer.errors import ConfigError

Hook = tuple[str, Callable]  # (hook name, fn(act, hook) -> act), as TransformerLens takes them
# The first block's input [batch, pos, d_model]: it fires in every pass of either model kind, before any hook_z,
# also where HookedTransformer.generate embeds the tokens itself (and so skips hook_embed).
PASS_INPUT_HOOK = "blocks.0.hook_resid_pre"


def hook_z_name(layer: int) -> str:
    """Per-head attention outputs ``[batch, pos, n_heads, d_head]``: where Δ goes."""
    return f"blocks.{layer}.attn.hook_z"


def resid_post_name(layer: int) -> str:
    """The residual stream after block ``layer`` ``[batch, pos, d_model]``: where function and in-context vectors go."""
    return f"blocks.{layer}.hook_resid_post"


def head_label(layer: int, head: int) -> str:
    """How a head is named in tables and figures: ``L4.H2`` is head 2 of layer 4."""
    return f"L{layer}.H{head}"


def check_layer(model, layer: int) -> str:
    """The hook name for ``layer``, once the model is of a kind headsteer takes, the layer and its hook exist."""
    model_kind(model)
    n_layers = model.cfg.n_layers
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ConfigError(f"layer {layer!r} is out of range: this model has layers 0..{n_layers - 1}")
    name = hook_z_name(layer)
    if name not in model.hook_dict:
        raise ConfigError(f"hook {name!r} does not exist on this model; cannot intervene on per-head outputs")
    return name


@runtime_checkable
class PromptPositions(Protocol):
    """Per forward pass: each row's last prompt position, or None when the pass gets no Δ."""

    def index(self, batch: int, pos: int, device: torch.device) -> Int[Tensor, " batch"] | None: ...


@dataclass(frozen=True)
class AtIndex:
    """Explicit positions: row b's last prompt token is ``last_index[b]`` in passes of ``prompt_len`` or more."""

    last_index: Int[Tensor, " batch"]
    prompt_len: int

    def index(self, batch: int, pos: int, device: torch.device) -> Int[Tensor, " batch"] | None:
        return None if pos < self.prompt_len else self.last_index.to(device)


class PromptTracker:
    """Finds the prompt's last token in passes run by someone else's loop (e.g. ``model.generate``).

    :meth:`observe` is a hook on the first block's input ``[batch, pos, d_model]``
    (:data:`PASS_INPUT_HOOK`), which fires before any ``hook_z`` of the same pass.
    With P the recorded prompt's length, a pass is

    * a KV-cache step when one position long after a prompt: no Δ;
    * a re-run of the prompt when longer than P and its first P inputs
      equal the recorded prompt's (bitwise: a token's embedding, plus a learned
      position embedding where the model has one, is a table lookup):
      Δ at position P − 1;
    * otherwise a new prompt: recorded, Δ at its final position.

    A one-token pass right after a prompt is always read as a KV-cache step,
    so a separate one-token prompt in the same ``with`` gets no Δ: run such
    prompts in their own ``with``.
    """

    def __init__(self) -> None:
        self._prompt: Tensor | None = None
        self._index: Tensor | None = None

    def observe(self, inputs: Float[Tensor, "batch pos d_model"], hook) -> Tensor:
        batch, pos = inputs.shape[:2]
        prompt = self._prompt
        if prompt is not None and prompt.shape[0] == batch and pos == 1:
            self._index = None
        elif (
            prompt is not None
            and prompt.shape[0] == batch
            and pos > prompt.shape[1]
            and torch.equal(inputs[:, : prompt.shape[1]], prompt)
        ):
            self._index = torch.full((batch,), prompt.shape[1] - 1, device=inputs.device)
        else:
            self._prompt = inputs.detach().clone()
            self._index = torch.full((batch,), pos - 1, device=inputs.device)
        return inputs

    def index(self, batch: int, pos: int, device: torch.device) -> Int[Tensor, " batch"] | None:
        return None if self._index is None else self._index.to(device)

    def hook(self) -> Hook:
        return PASS_INPUT_HOOK, self.observe


def prompt_positions(
    last_index: Int[Tensor, " batch"] | None, prompt_len: int | None
) -> tuple[PromptPositions, list[Hook]]:
    """Explicit positions when given; else a :class:`PromptTracker` and the hook that feeds it."""
    if (last_index is None) != (prompt_len is None):
        raise ValueError("give both last_index and prompt_len, or neither")
    if last_index is None or prompt_len is None:
        tracker = PromptTracker()
        return tracker, [tracker.hook()]
    return AtIndex(last_index, prompt_len), []


class PerPass:
    """Positions set by the caller before each pass: headsteer's own decoding loop knows which pass is which."""

    def __init__(self) -> None:
        self.current: Tensor | None = None

    def index(self, batch: int, pos: int, device: torch.device) -> Int[Tensor, " batch"] | None:
        return None if self.current is None else self.current.to(device)


class PromptEndAdd:
    """``fn(act, hook) -> act`` adding ``delta`` at each row's last prompt token (see the module docstring).

    The activation is ``[batch, pos, *site]``: ``site`` is ``(n_heads, d_head)``
    for ``hook_z`` (the default, ``site_ndim=2``) or ``(d_model,)`` for a
    residual-stream hook (``site_ndim=1``). ``delta`` is ``site``-shaped (one
    vector for all rows) or ``[batch, *site]`` (one per row).
    """

    def __init__(self, delta: Float[Tensor, "*rows ..."], positions: PromptPositions, site_ndim: int = 2):
        if delta.ndim not in (site_ndim, site_ndim + 1):
            site = "[n_heads, d_head]" if site_ndim == 2 else f"a {site_ndim}-d site"
            raise ValueError(f"Δ must be {site} or [batch, ...] of it, got {tuple(delta.shape)}")
        self.delta = delta
        self.positions = positions
        self.site_ndim = site_ndim

    def __call__(self, act: Float[Tensor, "batch pos ..."], hook) -> Tensor:
        site = tuple(self.delta.shape[-self.site_ndim :])
        if act.ndim != 2 + self.site_ndim or tuple(act.shape[2:]) != site:
            raise ValueError(
                f"{getattr(hook, 'name', 'hook')}: activation {tuple(act.shape)} does not fit Δ "
                f"{tuple(self.delta.shape)}; expected [batch, pos, {', '.join(map(str, site))}]"
            )
        batch, pos = act.shape[:2]
        index = self.positions.index(batch, pos, act.device)
        if index is None:
            return act
        onehot = torch.nn.functional.one_hot(index, pos).to(act.dtype)
        delta = self.delta.to(device=act.device, dtype=act.dtype)
        if delta.ndim == self.site_ndim:
            delta = delta.unsqueeze(0)
        return act + onehot.reshape(batch, pos, *[1] * self.site_ndim) * delta[:, None]


def delta_hooks(
    layer: int | Int[Tensor, " batch"],
    delta: Float[Tensor, "*rows n_heads d_head"],
    positions: PromptPositions,
) -> list[Hook]:
    """Hooks adding Δ at one layer, or at each row's own layer (``layer`` per row, Δ per row)."""
    if isinstance(layer, int):
        return [(hook_z_name(layer), PromptEndAdd(delta, positions))]
    if delta.ndim != 3 or delta.shape[0] != layer.shape[0]:
        raise ValueError(f"per-row layers need a per-row Δ [batch, n_heads, d_head], got {tuple(delta.shape)}")
    hooks: list[Hook] = []
    for value in layer.unique().tolist():
        on = (layer == value).to(delta.dtype)[:, None, None]
        hooks.append((hook_z_name(int(value)), PromptEndAdd(delta * on, positions)))
    return hooks


@contextmanager
def added_hooks(model, hooks: Sequence[Hook]) -> Iterator[None]:
    """Attach ``hooks`` for the body of the ``with``; exactly these are removed in ``finally``.

    Uses the bridge's own scoped context, which removes the handles it added
    and nothing else (hooks attached before stay).
    """
    if not hooks:  # nothing to add (a fit step whose Δ is added by hand): the model's context costs a millisecond
        yield
        return
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
