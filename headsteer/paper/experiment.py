"""What every method table shares: one config hierarchy, and the cell each method runs on.

A method table (comparison, composition, opinion) runs each of its methods on
each (task, seed) *cell* (:func:`headsteer.paper.runner.run_methods`). A
:class:`Cell` knows its model, task, seed, training and held-out items and the
experiment's own config (a subclass of :class:`ExperimentConfig`). What several
methods of one cell use (the table's function vector, the composition's three
Δ's) is a ``functools.cached_property`` of that experiment's cell class: computed
when the first method asks for it, then shared by the cell's other methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Generic, TypeVar

import pandas as pd

from headsteer.config import PAIR_LOSSES, FitConfig, PairLossName
from headsteer.errors import ConfigError
from headsteer.evaluate import DEFAULT_MAX_NEW_TOKENS, evaluate_pairs
from headsteer.prompts import Template
from headsteer.steering import Steering
from headsteer.tasks import Pair

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from headsteer.paper.results import JSON


def check_count(owner: object, name: str, value: object, minimum: int) -> None:
    """Refuse ``value`` unless it is an int (not a bool) >= ``minimum``, naming ``owner``'s field."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{type(owner).__name__}.{name} must be an int >= {minimum}, got {value!r}")


def check_number(
    owner: object, name: str, value: object, at_least: float | None = None, above: float | None = None
) -> None:
    """Refuse ``value`` unless it is a finite number (not a bool), ``>= at_least`` and ``> above`` where given."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (at_least is not None and value < at_least)
        or (above is not None and value <= above)
    ):
        bound = f" >= {at_least:g}" if at_least is not None else f" > {above:g}" if above is not None else ""
        raise ConfigError(f"{type(owner).__name__}.{name} must be a finite number{bound}, got {value!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """What every method table shares: split sizes, and Δ's layer, step budget and penalty weights.

    Attributes:
        n_train: training items per (task, seed) cell, the same for every method.
        max_test: held-out items scored per cell (None: every item not trained on).
        layer: the block whose ``attn.hook_z`` receives Δ.
        fit_steps: Δ's optimisation steps.
        gamma, lam: Δ's penalty weights γ (elementwise L1) and λ (per-head group norm).
    """

    n_train: int = 10
    max_test: int | None = 100
    layer: int = FitConfig().layer
    fit_steps: int = FitConfig().steps
    gamma: float = FitConfig().gamma
    lam: float = FitConfig().lam

    def __post_init__(self) -> None:
        check_count(self, "n_train", self.n_train, 1)
        if self.max_test is not None:
            check_count(self, "max_test", self.max_test, 1)
        check_count(self, "layer", self.layer, 0)
        check_count(self, "fit_steps", self.fit_steps, 1)
        check_number(self, "gamma", self.gamma, at_least=0.0)
        check_number(self, "lam", self.lam, at_least=0.0)

    def fit_config(self, seed: int) -> FitConfig:
        """How each Δ of the cell with ``seed`` is fitted (a method varies it with ``dataclasses.replace``)."""
        return FitConfig(layer=self.layer, gamma=self.gamma, lam=self.lam, steps=self.fit_steps, seed=seed)

    def to_dict(self) -> dict[str, JSON]:
        """Every field, as the results file's settings record it."""
        return asdict(self)


@dataclass(frozen=True)
class PairConfig(ExperimentConfig):
    """An experiment on (input, output) pairs: Δ's loss and how long a generated answer may be.

    Attributes:
        loss: Δ's task loss on the pairs (``sequence``, the default: every answer token and the stop
            string; or ``first_token``, the paper's).
        max_new_tokens: greedy tokens generated per held-out answer before it is cut.
    """

    loss: PairLossName = "sequence"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in PAIR_LOSSES:
            raise ConfigError(f"{type(self).__name__}.loss must be one of {PAIR_LOSSES} (--loss), got {self.loss!r}")
        check_count(self, "max_new_tokens", self.max_new_tokens, 1)

    def fit_config(self, seed: int) -> FitConfig:
        return replace(super().fit_config(seed), loss=self.loss)


ConfigT = TypeVar("ConfigT", bound=ExperimentConfig)
ItemT = TypeVar("ItemT")


@dataclass(frozen=True, eq=False)
class Cell(Generic[ItemT, ConfigT]):
    """One (task, seed) of an experiment: the model, the split's items and the experiment's config.

    ``task`` names the cell in the results (a task, a composed task or an OpinionQA group).
    """

    model: TransformerBridge
    task: str
    seed: int
    train: list[ItemT]
    test: list[ItemT]
    config: ConfigT

    def fit_config(self) -> FitConfig:
        """The experiment's Δ fit for this cell's seed."""
        return self.config.fit_config(self.seed)


PairConfigT = TypeVar("PairConfigT", bound=PairConfig)


@dataclass(frozen=True, eq=False)
class PairCell(Cell[Pair, PairConfigT]):
    """A cell of (input, output) pairs scored by greedy generation with a prompt template."""

    template: Template

    def score(self, template: Template | None = None, steering: Steering = ()) -> pd.DataFrame:
        """``evaluate_pairs`` on the held-out pairs (default: the cell's own template)."""
        chosen = template or self.template
        return evaluate_pairs(
            self.model, self.test, chosen, steering, max_new_tokens=self.config.max_new_tokens, progress=False
        )


CellT = TypeVar("CellT", bound=Cell)
# A method: a cell -> one row per held-out item, with the item's columns and its metrics.
Method = Callable[[CellT], pd.DataFrame]
