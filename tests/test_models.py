"""Model loading: hook_z is checked, the default model's cache is written whole or not at all."""

import pytest

import headsteer as hs
from headsteer import models
from headsteer.errors import ModelLoadError
from tests.helpers import save_tiny_model, tiny_bridge


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
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
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
