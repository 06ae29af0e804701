"""Model loading: hook_z is checked, the default model's cache is written whole or not at all."""

import pytest
import torch

import headsteer as hs
from headsteer import files, models
from headsteer.errors import ConfigError, ModelLoadError
from tests.helpers import save_tiny_model, tiny_bridge, tiny_hf_model, tiny_tokenizer


def test_local_directory_loads_and_hook_z_has_the_head_shape(tmp_path):
    model = hs.load_model(str(save_tiny_model("llama", tmp_path / "llama")))
    assert model.cfg.model_name == str(tmp_path / "llama")
    assert (model.cfg.n_heads, model.cfg.d_head) == (4, 8)
    models.verify_hook_z(model)


def test_a_hook_z_that_never_fires_is_caught(monkeypatch):
    model = tiny_bridge("gpt2")
    real = model.hooks

    def silent_hooks(fwd_hooks=()):  # the bridge skipping our hook silently
        return real(fwd_hooks=[])

    monkeypatch.setattr(model, "hooks", silent_hooks)
    with pytest.raises(RuntimeError, match=r"hook_z fired with shapes \[\], expected one call of \(1, 2, 4, 8\)"):
        models.verify_hook_z(model)


def test_conversion_failure_leaves_no_half_written_cache(tmp_path, monkeypatch):
    def broken(out_dir):
        (out_dir / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(OSError, match="disk full"):
        models.default_model_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_converted_cache_is_reused(tmp_path, monkeypatch):
    calls = []

    def fake(out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(models, "_convert_gguf", fake)
    first = models.default_model_dir(tmp_path)
    assert models.default_model_dir(tmp_path) == first and len(calls) == 1
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path))
    assert models.default_model_dir() == first and len(calls) == 1


def test_open_model_reads_config_and_tokenizer_without_the_weights(tmp_path, monkeypatch):
    directory = save_tiny_model("gpt2", tmp_path / "gpt2")
    monkeypatch.setattr(models, "load_weights", lambda *a, **k: pytest.fail("open_model loaded the weights"))
    files = models.open_model(str(directory))
    assert (files.name, files.n_layers, files.n_heads) == (str(directory), 3, 4)


def test_load_from_uses_the_opened_files(tmp_path):
    files = models.open_model(str(save_tiny_model("llama", tmp_path / "llama")))
    model = models.load_from(files)
    assert model.cfg.n_layers == files.n_layers and model.tokenizer is files.tokenizer


@pytest.fixture
def offline(monkeypatch):
    """No hub: what this project's machines see (and no retries against an unreachable host)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "no-such-model-xyz",
            r"model 'no-such-model-xyz' is not a local folder and could not be fetched from the "
            r"Hugging Face hub .*names not on disk need the hub",
        ),
        ("./no/such/dir", r"model './no/such/dir': no such folder"),
    ],
)
def test_a_model_that_cannot_be_found_is_a_model_load_error(offline, name, message):
    with pytest.raises(ModelLoadError, match=message):
        models.open_model(name)


def test_a_folder_without_a_model_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match=rf"the folder {tmp_path} holds no model transformers can read"):
        models.open_model(str(tmp_path))


def test_load_model_takes_a_dtype_by_name_and_fits_in_it(tmp_path):
    model = hs.load_model(str(save_tiny_model("llama", tmp_path / "llama")), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    result = hs.fit(model, [hs.Pair("hot", "cold")], hs.get_template("qa"), hs.FitConfig(layer=1, steps=2))
    assert result.intervention.delta.dtype == torch.float32  # Δ stays fp32 whatever the model's dtype


@pytest.mark.parametrize(
    "placement, message",
    [
        (dict(dtype="float64"), r"dtype must be one of float32, bfloat16, float16 .*got 'float64'"),
        (dict(dtype=torch.int8), r"dtype must be one of .*got torch.int8"),
        (dict(device="gpu"), r"device 'gpu' is not a torch device"),
        (dict(device="cuda:0", device_map="auto"), r"give a device \('cuda:0'\) or a device_map \('auto'\), not both"),
    ],
)
def test_a_placement_that_cannot_be_is_refused_before_anything_loads(placement, message, monkeypatch):
    monkeypatch.setattr(models, "open_model", lambda *a, **k: pytest.fail("the model was opened"))
    with pytest.raises(ConfigError, match=message):
        hs.load_model("unused", **placement)


def test_a_cuda_device_this_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'cuda': torch sees no CUDA device on this machine"):
        models.Placement(device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"'cuda:2': this machine has 2 CUDA device\(s\), 0..1"):
        models.Placement(device="cuda:2")
    assert models.Placement(device="cuda:1").device == "cuda:1"


def test_wrap_model_keeps_the_models_dtype_and_place():
    model = models.wrap_model(tiny_hf_model("gpt2").to(torch.bfloat16), tiny_tokenizer(), "tiny-gpt2")
    assert next(model.parameters()).dtype == torch.bfloat16 and str(model.cfg.device) == "cpu"


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("google/gemma-3-270m", "gemma-3-270m", True),  # TransformerBridge vs HookedTransformer naming
        ("meta-llama/Meta-Llama-3-8B", "Meta-Llama-3-8B", True),
        ("gpt2", "gpt2", True),
        ("google/gemma-3-270m", "gemma-3-1b", False),
        ("google/gemma-2-2b", "google/gemma-2-9b", False),
    ],
)
def test_the_signature_lets_the_same_model_through_under_either_kinds_name(a, b, same):
    shapes = dict(n_layers=18, n_heads=4, d_head=256, d_model=640)
    ours, theirs = models.ModelSignature(a, **shapes), models.ModelSignature(b, **shapes)
    assert (ours.mismatches(theirs) == []) == same
    other_shape = models.ModelSignature(b, **{**shapes, "d_head": 128})
    assert ours.mismatches(other_shape) == (
        ["d_head: trained on 256, model has 128"]
        if same
        else [
            f"name: trained on {a!r}, model has {b!r}",
            "d_head: trained on 256, model has 128",
        ]
    )
