"""A TransformerBridge's hook-free components stepped around for one step's suffix.

A TransformerBridge wraps each Hugging Face module of a block (attention, MLP, norms, linear
layers) in a component that fires its hook points around that module's computation. Where no
hook is attached, the wrapper only costs time, and on a suffix of a few rows the cost is not
small beside the arithmetic: module calls for every hook point, each norm computed a second
time for hooks nobody reads, an attention re-implemented to expose its pattern (4.6 and 8.0 ms of a
fit step of about 125 ms on Gemma 3 270M in two runs of ``python benchmarks/profile_step.py``).

:func:`bridge_slots` finds, once, every place where a Hugging Face module holds a bridge
component as a child (a *slot*: ``Gemma3DecoderLayer.self_attn``, ``Gemma3Attention.q_proj``, …).
Within ``with bare_components(slots):`` each slot whose component has no hook of any kind
anywhere inside it (TransformerLens hook points and plain torch module hooks alike, checked on
entry) holds the wrapped Hugging Face module itself, so its parent calls that directly; on
leaving, every slot gets its component back, whatever happens. Nothing changes where torch has
global module hooks. Δ's own hook on ``blocks.{ℓ}.attn.hook_z`` (the output projection's input
hook on a bridge) keeps layer ℓ's attention and that projection wrapped.

The Hugging Face modules compute what their components compute when no hook edits anything,
but not always in the same order (an attention component computes its scores itself), so the
plan that uses this (:mod:`headsteer.fitting.from_layer`) checks that its block-by-block run
reproduces the bridge's forward, and does without it otherwise. Gradients are autograd's through
the modules that ran.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn
from torch.nn.modules import module as torch_module

__all__ = ["Slot", "any_hook", "bare_components", "bridge_slots", "global_module_hooks"]


@dataclass(frozen=True)
class Slot:
    """``parent.<name>`` holds ``component``, a bridge component wrapping the Hugging Face module ``wrapped``."""

    parent: nn.Module
    name: str
    component: nn.Module
    wrapped: nn.Module
    inside: tuple[nn.Module, ...]  # every module within the component, where a hook could be attached

    def hooked(self) -> bool:
        return any_hook(self.inside)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


_hook_dicts = operator.attrgetter(*_HOOK_DICTS)


def any_hook(modules: Iterable[nn.Module], allowed: frozenset[int] = frozenset()) -> bool:
    """Whether a hook of any kind is attached to one of ``modules``, other than the handles (ids) in ``allowed``.

    Checked every step, on every module of every block, so without a Python loop: each module's four hook
    dicts read through ``attrgetter``, their keys (the handles' ids, unique across kinds) chained into one set.
    """
    handles = set(itertools.chain.from_iterable(itertools.chain.from_iterable(map(_hook_dicts, modules))))
    return not handles <= allowed


def bridge_slots(modules: Iterable[nn.Module]) -> tuple[Slot, ...]:
    """Each child slot of a Hugging Face module inside ``modules`` holding a bridge component (none: not a bridge)."""
    try:
        from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    except ImportError:  # a TransformerLens without bridges: nothing to step around
        return ()
    slots: dict[tuple[int, str], Slot] = {}
    for root in modules:
        for parent in root.modules():
            if isinstance(parent, GeneralizedComponent):  # a component calls its children its own way: left as is
                continue
            for name, child in parent._modules.items():
                wrapped = None if child is None else child._modules.get("_original_component")
                if isinstance(child, GeneralizedComponent) and wrapped is not None:
                    slots[(id(parent), name)] = Slot(parent, name, child, wrapped, tuple(child.modules()))
    return tuple(slots.values())


def global_module_hooks() -> bool:
    """Whether torch has module hooks for every module (they would see different modules called)."""
    return any(getattr(torch_module, f"_global{d}", None) for d in _HOOK_DICTS)


@contextmanager
def bare_components(slots: Iterable[Slot]) -> Iterator[None]:
    """Within the block, each hook-free component in ``slots`` is replaced in its slot by the module it wraps."""
    bare = [] if global_module_hooks() else [slot for slot in slots if not slot.hooked()]
    try:
        for slot in bare:
            slot.parent._modules[slot.name] = slot.wrapped
        yield
    finally:
        for slot in bare:
            slot.parent._modules[slot.name] = slot.component
