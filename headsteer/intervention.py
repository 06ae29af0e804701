"""The intervention artifact: Δ for one layer's heads, where and on what it was trained.

Saved as two files, written as one unit (``files.write_files_atomic``, the JSON last)::

    STEM.safetensors  exactly one tensor, ``delta`` [n_heads, d_head], of a float dtype
    STEM.json         format_version 2: layer, hook_name, model (the ModelSignature), task,
                      template, fit_config, training (a TrainingRecord, or null), and
                      tensors_sha256, the sha256 of STEM.safetensors

Never pickle. Reading is strict: the JSON holds exactly these keys with
these types; every redundant field must agree (``hook_name`` is the hook of
``layer``, ``fit_config.layer`` is ``layer``, ``training.pairs_sha256``
hashes the recorded pairs, the tensor file hashes to ``tensors_sha256``);
anything else is an :class:`ArtifactError` naming the file and the field.
Format 1 (no ``training``, no ``tensors_sha256``) still loads, for
inspection; it records no training inputs, so it cannot be scored on
held-out pairs (``experiments.heldout_pairs`` refuses it).

``template`` is ``{}``, a :class:`~headsteer.prompts.Template`'s fields
(exactly its four) for fits on pairs, or, for fits on pre-tokenised prompts,
a prompt format: an object of strings with a ``"kind"``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from jaxtyping import Float
from safetensors import SafetensorError
from torch import Tensor

from headsteer.config import FitConfig
from headsteer.errors import ArtifactError, ConfigError, ModelMismatchError, OutputPathError
from headsteer.files import ArtifactPaths, check_output_file, json_bytes, write_files_atomic
from headsteer.hooks import PromptEndAdd, PromptPositions, check_layer, hook_z_name
from headsteer.models import ModelSignature
from headsteer.prompts import Template
from headsteer.steering import Applies, Hook
from headsteer.strict_json import Checked, Kind, check_object, check_value, child, is_kind, show
from headsteer.training_record import TrainingRecord

FORMAT_VERSION = 2
DELTA_KEY = "delta"  # the one tensor in STEM.safetensors
# The JSON's keys and their kinds, per format version this code reads.
_V1_SPEC: dict[str, Kind] = {
    "format_version": int,
    "layer": int,
    "hook_name": str,
    "model": dict,
    "task": str,
    "template": dict,
    "fit_config": dict,
}
JSON_SPECS: dict[int, dict[str, Kind]] = {
    1: _V1_SPEC,
    2: {**_V1_SPEC, "training": (dict, type(None)), "tensors_sha256": str},
}
# A saved fit_config is {} (a sum of Δ's) or every FitConfig field, each of its resolved value's kind.
FIT_CONFIG_SPEC: dict[str, Kind] = {name: type(value) for name, value in FitConfig().to_dict().items()}


@dataclass(frozen=True)
class Intervention(Applies):
    """Δ ∈ R^{n_heads × d_head}, added to ``blocks.{layer}.attn.hook_z`` at the last prompt token.

    ``training`` records the examples Δ was fitted on (None when unknown:
    a hand-made Δ, or a format-1 file).
    """

    delta: Float[Tensor, "n_heads d_head"]
    layer: int
    model: ModelSignature
    task: str = ""
    template: dict[str, str] = field(default_factory=dict)
    fit_config: dict[str, Any] = field(default_factory=dict)
    training: TrainingRecord | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every field valid and consistent with the others; an ArtifactError names the first that is not.

        Run on construction and again by ``save``: Δ and the dicts are
        mutable, and an in-place edit must not produce a file ``load`` refuses.
        """
        check_delta(self.delta, self.model)
        check_value(self.layer, int, "layer", ArtifactError)
        if not 0 <= self.layer < self.model.n_layers:
            raise ArtifactError(
                f"field 'layer': layer {self.layer!r} is out of range for a model with {self.model.n_layers} layers"
            )
        check_value(self.task, str, "task", ArtifactError)
        check_template(self.template)
        check_fit_config(self.fit_config, self.layer)
        if self.training is not None and not isinstance(self.training, TrainingRecord):
            raise ArtifactError(
                f"field 'training' must be a TrainingRecord or None, got {type(self.training).__name__}"
            )

    @property
    def hook_name(self) -> str:
        return hook_z_name(self.layer)

    # ---- algebra: same layer and model only ------------------------------------------
    def __add__(self, other: Intervention) -> Intervention:
        if not isinstance(other, Intervention):
            return NotImplemented
        if other.layer != self.layer or self.model.mismatches(other.model):
            raise ValueError(
                f"cannot add interventions at layer {self.layer} ({self.model.name}) and layer "
                f"{other.layer} ({other.model.name}); apply them together with steer() instead"
            )
        # The sum was trained on both Δ's examples; unknown if either's are.
        training = None if self.training is None or other.training is None else self.training.combined(other.training)
        return replace(
            self, delta=self.delta + other.delta, task=f"{self.task}+{other.task}", fit_config={}, training=training
        )

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

    # ---- applying ------------------------------------------------------------------------
    def check_fits(self, model) -> None:
        problems = self.model.mismatches(ModelSignature.of(model))
        if problems:
            raise ModelMismatchError(
                f"intervention for task {self.task!r} does not fit this model: " + "; ".join(problems)
            )
        check_layer(model, self.layer)

    def hooks(self, positions: PromptPositions) -> list[Hook]:
        """Δ added to ``hook_z`` at the last prompt token (``applied`` and ``steer`` choose the positions)."""
        return [(self.hook_name, PromptEndAdd(self.delta, positions))]

    # ---- persistence -------------------------------------------------------------------
    def metadata(self) -> dict[str, object]:
        """The JSON record, less ``tensors_sha256`` (which depends on the tensor file's bytes)."""
        return {
            "format_version": FORMAT_VERSION,
            "layer": self.layer,
            "hook_name": self.hook_name,
            "model": self.model.to_dict(),
            "task": self.task,
            "template": self.template,
            "fit_config": self.fit_config,
            "training": None if self.training is None else self.training.to_dict(),
        }

    def artifact_files(self, path: str | Path) -> list[tuple[Path, bytes]]:
        """The two files of ``save(path)`` as (path, contents), the JSON last; checks every field and path first."""
        self.check()
        paths = check_artifact_output(path, flag="intervention path")
        tensors = safetensors.torch.save({DELTA_KEY: self.delta.detach().cpu().contiguous()})
        meta = {**self.metadata(), "tensors_sha256": hashlib.sha256(tensors).hexdigest()}
        return [(paths.tensors, tensors), (paths.meta, json_bytes(meta))]

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path.safetensors`` and ``path.json`` as one unit: both or neither, checked before any write."""
        tensors, meta = write_files_atomic(self.artifact_files(path))
        return tensors, meta

    @classmethod
    def load(cls, path: str | Path, model=None) -> Intervention:
        """Read an intervention strictly (see the module docstring); with ``model``, refuse it unless it fits."""
        paths = ArtifactPaths.of(path)
        check_present(paths)
        meta = read_json(paths.meta)
        try:
            version, fields = check_meta(meta)
            signature = ModelSignature.from_dict(fields["model"])
            record = fields.get("training")  # absent in format 1, null where unknown
            training = None if record is None else TrainingRecord.from_dict(record)
        except ArtifactError as err:
            raise ArtifactError(f"{paths.meta}: {err}") from None
        data = read_bytes(paths.tensors)
        delta = read_delta(paths.tensors, data, signature)
        if version >= 2 and hashlib.sha256(data).hexdigest() != fields["tensors_sha256"]:
            raise ArtifactError(
                f"{paths.tensors} does not match {paths.meta} (its sha256 differs from the JSON's field "
                "'tensors_sha256'): an interrupted or concurrent save?"
            )
        try:
            iv = cls(
                delta, fields["layer"], signature, fields["task"], fields["template"], fields["fit_config"], training
            )
        except ArtifactError as err:
            raise ArtifactError(f"{paths.meta}: {err}") from None
        if model is not None:
            iv.check_fits(model)
        return iv


# ---- checks shared by construction and loading -----------------------------------------
def check_delta(delta: object, signature: ModelSignature) -> None:
    """Δ is a finite float tensor of shape [n_heads, d_head]."""
    if not isinstance(delta, Tensor) or not delta.is_floating_point():
        kind = delta.dtype if isinstance(delta, Tensor) else type(delta).__name__
        raise ArtifactError(f"Δ must be a tensor of a float dtype, got {kind}")
    expected = (signature.n_heads, signature.d_head)
    if tuple(delta.shape) != expected:
        raise ArtifactError(f"Δ has shape {tuple(delta.shape)}, expected [n_heads, d_head] = {list(expected)}")
    if not torch.isfinite(delta).all():
        raise ArtifactError("Δ contains NaN or infinite values")


def check_template(template: object) -> None:
    """``{}``, a Template's exact fields, or a prompt format (an object of strings with a ``"kind"``)."""
    if not isinstance(template, dict):
        raise ArtifactError(f"field 'template' must be a JSON object, got {show(template)}")
    if not template:
        return
    if "kind" in template:
        for key, value in template.items():
            check_value(value, str, child("template", key), ArtifactError)
        return
    try:
        Template.from_dict(template)
    except ConfigError as err:
        raise ArtifactError(str(err)) from None


def check_fit_config(fit_config: object, layer: int) -> None:
    """``{}`` (a sum of Δ's) or a valid FitConfig's exact fields, trained at ``layer``."""
    if not isinstance(fit_config, dict):
        raise ArtifactError(f"field 'fit_config' must be a JSON object, got {show(fit_config)}")
    if not fit_config:
        return
    check_object(fit_config, FIT_CONFIG_SPEC, "fit_config", ArtifactError)
    try:
        FitConfig(**fit_config)
    except ValueError as err:
        raise ArtifactError(f"field 'fit_config': {err}") from None
    if fit_config["layer"] != layer:
        raise ArtifactError(f"field 'fit_config.layer' is {fit_config['layer']} but field 'layer' is {layer}")


# ---- reading the files -------------------------------------------------------------------
def check_present(paths: ArtifactPaths) -> None:
    """Both files are there; else say which is missing."""
    missing = [p for p in (paths.tensors, paths.meta) if not p.is_file()]
    if len(missing) == 2:
        raise ArtifactError(f"no intervention at {paths.stem}: {paths.tensors} and {paths.meta} do not exist")
    if missing:
        other = paths.meta if missing[0] == paths.tensors else paths.tensors
        raise ArtifactError(f"{missing[0]} does not exist (or is not a file) but {other} does: an incomplete save?")


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ArtifactError(f"{path}: cannot be read ({err.strerror})") from None


def read_json(path: Path) -> object:
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err}); a truncated or hand-edited file?") from None


def check_meta(meta: object) -> tuple[int, Checked]:
    """The format version and the JSON's fields, checked against that version's keys and kinds."""
    if not isinstance(meta, dict):
        raise ArtifactError(f"must hold a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if not is_kind(version, int) or version not in JSON_SPECS:
        raise ArtifactError(f"field 'format_version' must be one of {sorted(JSON_SPECS)}, got {version!r}")
    fields = check_object(meta, JSON_SPECS[version], "", ArtifactError)
    if fields["hook_name"] != hook_z_name(fields["layer"]):
        raise ArtifactError(
            f"field 'layer' is {fields['layer']} but field 'hook_name' is {fields['hook_name']!r} "
            f"(layer {fields['layer']}'s hook is {hook_z_name(fields['layer'])!r})"
        )
    return version, fields


def read_delta(path: Path, data: bytes, signature: ModelSignature) -> Tensor:
    """The one tensor ``delta`` of a safetensors file's bytes, checked against ``signature``."""
    try:
        tensors = safetensors.torch.load(data)
    except SafetensorError as err:
        raise ArtifactError(f"{path}: not a readable safetensors file ({err}); a truncated or corrupt file?") from None
    if set(tensors) != {DELTA_KEY}:
        raise ArtifactError(f"{path}: must hold exactly one tensor {DELTA_KEY!r}, holds {sorted(tensors)}")
    try:
        check_delta(tensors[DELTA_KEY], signature)
    except ArtifactError as err:
        raise ArtifactError(f"{path}: tensor {DELTA_KEY!r}: {err}") from None
    return tensors[DELTA_KEY]


def check_artifact_output(stem: str | Path, flag: str = "--out") -> ArtifactPaths:
    """Refuse, before any work, an output stem whose files cannot all be written; creates nothing.

    The stem must not end with a path separator or be an existing
    directory (its files would land beside it under a surprising name), and
    every file of the artifact (``ArtifactPaths.all``) must be writable.
    """
    text = os.fspath(stem)
    if text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise OutputPathError(f"{flag} {text}: ends with a path separator; give a path stem such as runs/antonym")
    paths = ArtifactPaths.of(stem)
    if paths.stem.is_dir():
        raise OutputPathError(
            f"{flag} {text}: is a directory; give a path stem for the files, such as {paths.stem / 'intervention'}"
        )
    for path in paths.all:
        check_output_file(path, flag)
    return paths
