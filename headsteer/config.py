"""Frozen, validated configuration for fitting an intervention.

Every field is a plain value so a config round-trips through JSON
(``FitConfig.from_dict(cfg.to_dict()) == cfg``) and is stored beside each
saved intervention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from headsteer.errors import ConfigError

# Losses on (input, output) pairs; and on a distribution over answer options (OptionTargets), which only
# the opinion table builds: option_kl_reverse is the paper's KL(model ‖ group), option_kl is KL(group ‖ model).
PairLossName = Literal["first_token", "sequence"]
OptionLossName = Literal["option_kl_reverse", "option_kl"]
LossName = Literal[PairLossName, OptionLossName]
OptimizerName = Literal["prox_adam", "fista", "adam"]

LOSSES: tuple[LossName, ...] = get_args(LossName)
PAIR_LOSSES: tuple[PairLossName, ...] = get_args(PairLossName)
OPTION_LOSSES: tuple[OptionLossName, ...] = get_args(OptionLossName)
OPTIMIZERS: tuple[OptimizerName, ...] = get_args(OptimizerName)
# Step size used when ``lr`` is not given, per optimizer (chosen on antonym layer sweeps, see RESEARCH.md).
DEFAULT_LR: dict[str, float] = {"prox_adam": 0.15, "fista": 0.3, "adam": 0.05}


@dataclass(frozen=True)
class FitConfig:
    """How to fit Δ at one layer.

    Attributes:
        layer: block index ℓ whose ``attn.hook_z`` receives Δ.
        gamma: weight γ of the elementwise L1 penalty ‖Δ‖₁.
        lam: weight λ of the per-head group penalty Σ_h ‖Δ_h‖₂.
        loss: on pairs, ``sequence`` (teacher-forced NLL of every target token,
            answer end included; the default, chosen by cross-validated whole
            answers on training pairs, RESEARCH.md) or ``first_token`` (NLL of
            the target's first token, the paper's); over an option set,
            ``option_kl_reverse`` (KL(model ‖ target), the paper's) or
            ``option_kl`` (KL(target ‖ model)).
        optimizer: ``prox_adam`` (Adam's moments on the task loss, then the
            sparse-group-lasso prox in Adam's metric: exact zeros, the default),
            ``fista`` (accelerated proximal gradient, fixed step, closed-form
            prox) or ``adam`` (Adam on the subgradient of the whole objective,
            the paper's way: no exact zeros).
        steps: optimisation steps (each a full pass over the training set).
        lr: step size η (Adam's learning rate for the Adam-based ones); None
            takes ``DEFAULT_LR[optimizer]``, and the resolved value is stored.
        seed: seeds the training sample and any randomness in the fit.
    """

    layer: int = 4
    gamma: float = 0.01
    lam: float = 0.01
    loss: LossName = "sequence"
    optimizer: OptimizerName = "prox_adam"
    steps: int = 50
    lr: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ConfigError(f"layer must be a non-negative int, got {self.layer!r}")
        for name in ("gamma", "lam"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown FitConfig fields: {sorted(unknown)}")
        return cls(**data)
