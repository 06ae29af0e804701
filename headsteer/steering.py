"""One steering protocol for every steering object: Δ interventions, function vectors, in-context vectors.

A :class:`Steerer` says whether it fits a model (``check_fits``) and which
TransformerLens hooks apply it (``hooks(positions)``), given a
:class:`~headsteer.hooks.PromptPositions` that says, per forward pass, where
each row's prompt ends. Δ and function vectors act there only; an in-context
vector acts at every position and ignores it. Whoever runs the model decides
the positions:

* :func:`steer` (and every steerer's ``.applied(model)``): for a ``with``
  block around any forward or generation loop; explicit positions if given,
  else a :class:`~headsteer.hooks.PromptTracker`;
* headsteer's own decoding (:mod:`headsteer.generation`): per pass, by hand.

:class:`RowDeltas` is the batched form used by sweeps: one Δ per row, each at
its own layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol, Union, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor

from headsteer.hooks import Hook, PromptPositions, added_hooks, delta_hooks, prompt_positions


@runtime_checkable
class Steerer(Protocol):
    """Anything that steers a model through hooks: Intervention, FunctionVector, InContextVector."""

    def check_fits(self, model) -> None:
        """Raise ModelMismatchError unless this steerer was made for ``model``'s shapes."""
        ...

    def hooks(self, positions: PromptPositions) -> list[Hook]:
        """The hooks that apply it; prompt-end steerers act where ``positions`` says."""
        ...


@dataclass(frozen=True)
class RowDeltas:
    """One Δ per row, each at its own layer: many interventions scored in one batch."""

    layers: Int[Tensor, " batch"]
    deltas: Float[Tensor, "batch n_heads d_head"]

    def select(self, rows: slice | Tensor) -> RowDeltas:
        return RowDeltas(self.layers[rows], self.deltas[rows])


Steering = Union[Sequence[Steerer], RowDeltas]


def steering_hooks(model, steering: Steering, positions: PromptPositions) -> list[Hook]:
    """The hooks that apply ``steering``, after checking that each steerer fits the model."""
    if isinstance(steering, RowDeltas):
        return delta_hooks(steering.layers, steering.deltas, positions)
    for steerer in steering:
        steerer.check_fits(model)
    return [hook for steerer in steering for hook in steerer.hooks(positions)]


@contextmanager
def steer(
    model,
    steering: Steering,
    last_index: Int[Tensor, " batch"] | None = None,
    prompt_len: int | None = None,
) -> Iterator[None]:
    """Run ``model`` steered inside the ``with``; exactly these hooks are removed after.

    ``last_index``/``prompt_len`` place prompt-end steering explicitly (see
    :class:`~headsteer.hooks.AtIndex`); without them a
    :class:`~headsteer.hooks.PromptTracker` finds each prompt's last token,
    also in generation loops that are not headsteer's (``model.generate``).
    """
    positions, tracking = prompt_positions(last_index, prompt_len)
    with added_hooks(model, tracking + steering_hooks(model, steering, positions)):
        yield


class Applies:
    """Mixin: ``steerer.applied(model)`` is ``steer(model, [steerer])``."""

    def applied(
        self: Steerer, model, last_index: Tensor | None = None, prompt_len: int | None = None
    ) -> AbstractContextManager[None]:
        """Context manager: the model runs steered by this object inside the ``with`` (see :func:`steer`)."""
        return steer(model, [self], last_index, prompt_len)
