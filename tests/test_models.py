"""Model loading: hook_z is checked, the default model's cache is written whole or not at all."""

import pytest

import headsteer as hs
from headsteer import models
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
