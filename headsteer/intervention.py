"""The intervention artifact: Δ for one layer's heads, and where it was trained.

Saved as ``<path>.safetensors`` (Δ) + ``<path>.json`` (metadata); never pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from headsteer.display import intervention_html
from headsteer.errors import ModelMismatchError
from headsteer.hooks import PromptEndAdd, PromptPositions, added_hooks, check_layer, hook_z_name, prompt_positions

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSignature:
    """What an intervention needs of a model: its name and the shapes Δ depends on."""

    name: str
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int

    @classmethod
    def of(cls, model) -> ModelSignature:
        cfg = model.cfg
        return cls(str(cfg.model_name), cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model)

    def mismatches(self, other: ModelSignature) -> list[str]:
        return [
            f"{k}: trained on {getattr(self, k)!r}, model has {getattr(other, k)!r}"
            for k in self.__dataclass_fields__
            if getattr(self, k) != getattr(other, k)
        ]


@dataclass(frozen=True)
class Intervention:
    """Δ ∈ R^{n_heads × d_head}, added to ``blocks.{layer}.attn.hook_z`` at the last prompt token."""

    delta: Float[Tensor, "n_heads d_head"]
    layer: int
    model: ModelSignature
    task: str = ""
    template: dict[str, Any] = field(default_factory=dict)
    fit_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = (self.model.n_heads, self.model.d_head)
        if tuple(self.delta.shape) != expected:
            raise ValueError(f"Δ has shape {tuple(self.delta.shape)}, expected [n_heads, d_head] = {list(expected)}")
        if not torch.isfinite(self.delta).all():
            raise ValueError("Δ contains NaN or infinite values")
        if not 0 <= self.layer < self.model.n_layers:
            raise ValueError(f"layer {self.layer} is out of range for a model with {self.model.n_layers} layers")

    @property
    def hook_name(self) -> str:
        return hook_z_name(self.layer)

    # ---- algebra: same layer and model only ------------------------------------------
    def __add__(self, other: Intervention) -> Intervention:
        if not isinstance(other, Intervention):
            return NotImplemented
        if (other.layer, other.model) != (self.layer, self.model):
            raise ValueError(
                f"cannot add interventions at layer {self.layer} ({self.model.name}) and layer "
                f"{other.layer} ({other.model.name}); apply them together with steer() instead"
            )
        return replace(self, delta=self.delta + other.delta, task=f"{self.task}+{other.task}", fit_config={})

    def __mul__(self, scale: float) -> Intervention:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        return replace(self, delta=self.delta * float(scale), task=f"{scale:g}*{self.task}")

    __rmul__ = __mul__

    # ---- inspection --------------------------------------------------------------------
    def head_norms(self) -> Float[Tensor, " n_heads"]:
        """‖Δ_h‖₂ for each head."""
        return torch.linalg.vector_norm(self.delta, dim=-1)

    def active_heads(self) -> list[int]:
        return [int(h) for h in torch.nonzero(self.head_norms() > 0).flatten()]

    def sparsity(self) -> float:
        """Fraction of Δ's entries that are exactly zero."""
        return float((self.delta == 0).float().mean())

    def __repr__(self) -> str:
        norms = ", ".join(f"{n:.3g}" for n in self.head_norms().tolist())
        return (
            f"Intervention(task={self.task!r}, model={self.model.name!r}, hook={self.hook_name!r}, "
            f"Δ={list(self.delta.shape)}, head norms=[{norms}], zeros={self.sparsity():.0%})"
        )

    def _repr_html_(self) -> str:
        return intervention_html(self)

    # ---- applying ------------------------------------------------------------------------
    def check_fits(self, model) -> None:
        problems = self.model.mismatches(ModelSignature.of(model))
        if problems:
            raise ModelMismatchError(
                f"intervention for task {self.task!r} does not fit this model: " + "; ".join(problems)
            )
        check_layer(model, self.layer)

    def hook(self, positions: PromptPositions) -> tuple[str, PromptEndAdd]:
        return self.hook_name, PromptEndAdd(self.delta, positions)

    def applied(self, model, last_index: Tensor | None = None, prompt_len: int | None = None):
        """Context manager: the model runs with this intervention inside the ``with``.

        Without positions, Δ goes at the prompt's last token of each prompt the
        model is given, also under ``model.generate`` with or without a KV cache
        (see :class:`headsteer.hooks.PromptTracker`).
        """
        return steer(model, [self], last_index, prompt_len)

    # ---- persistence -------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "layer": self.layer,
            "hook_name": self.hook_name,
            "model": self.model.__dict__,
            "task": self.task,
            "template": self.template,
            "fit_config": self.fit_config,
        }

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path.safetensors`` and ``path.json`` atomically (both or neither)."""
        tensors_path, meta_path = artifact_paths(path)
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tensors_path.parent) as tmp:
            tmp_tensors, tmp_meta = Path(tmp) / "delta.safetensors", Path(tmp) / "meta.json"
            save_file({"delta": self.delta.detach().cpu().contiguous()}, str(tmp_tensors))
            tmp_meta.write_text(json.dumps(self.metadata(), indent=2))
            os.replace(tmp_tensors, tensors_path)
            os.replace(tmp_meta, meta_path)
        return tensors_path, meta_path

    @classmethod
    def load(cls, path: str | Path, model=None) -> Intervention:
        """Read an intervention; with ``model``, refuse it unless it fits that model."""
        tensors_path, meta_path = artifact_paths(path)
        for p in (tensors_path, meta_path):
            if not p.is_file():
                raise FileNotFoundError(f"intervention file {p} does not exist")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}")
        iv = cls(
            delta=load_file(str(tensors_path))["delta"],
            layer=meta["layer"],
            model=ModelSignature(**meta["model"]),
            task=meta["task"],
            template=meta["template"],
            fit_config=meta["fit_config"],
        )
        if model is not None:
            iv.check_fits(model)
        return iv


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


@contextmanager
def steer(
    model,
    interventions: Sequence[Intervention],
    last_index: Int[Tensor, " batch"] | None = None,
    prompt_len: int | None = None,
) -> Iterator[None]:
    """Run ``model`` with every intervention applied (each at its own layer).

    ``last_index``/``prompt_len`` place Δ explicitly (see ``headsteer.hooks``);
    without them a :class:`~headsteer.hooks.PromptTracker` finds each prompt's
    last token, including in generation loops that are not headsteer's.
    """
    for iv in interventions:
        iv.check_fits(model)
    positions, tracking = prompt_positions(last_index, prompt_len)
    with added_hooks(model, tracking + [iv.hook(positions) for iv in interventions]):
        yield
