"""The artifact: algebra, persistence, and refusing a model it does not fit."""

import json

import pytest
import torch

import headsteer as hs
from headsteer.intervention import ModelSignature, artifact_paths
from tests.helpers import tiny_bridge
from tests.test_hooks import LAYER, batch, make_iv, run


def test_save_load_round_trips_exactly(gemma_tiny, tmp_path):
    iv = hs.Intervention(
        torch.randn(gemma_tiny.cfg.n_heads, gemma_tiny.cfg.d_head), LAYER, ModelSignature.of(gemma_tiny),
        task="antonym", template=hs.get_template("qa").to_dict(), fit_config=hs.FitConfig(layer=LAYER).to_dict(),
    )
    tensors, meta = iv.save(tmp_path / "iv")
    assert tensors.name == "iv.safetensors" and meta.name == "iv.json"
    loaded = hs.Intervention.load(tmp_path / "iv", model=gemma_tiny)
    assert torch.equal(loaded.delta, iv.delta)
    assert loaded.metadata() == iv.metadata()
    assert json.loads(meta.read_text())["hook_name"] == f"blocks.{LAYER}.attn.hook_z"
    assert not list(tmp_path.glob("*/")), "no temporary directory left behind"


def test_load_refuses_a_model_of_another_shape_or_name(gemma_tiny, tmp_path):
    make_iv(gemma_tiny).save(tmp_path / "iv")
    with pytest.raises(hs.ModelMismatchError, match=r"d_head: trained on 12, model has 8"):
        hs.Intervention.load(tmp_path / "iv", model=tiny_bridge("llama"))
    other = tiny_bridge("gemma3", seed=1)
    other.cfg.model_name = "some-other-gemma"
    with pytest.raises(hs.ModelMismatchError, match="name: trained on 'tiny-gemma3'"):
        hs.Intervention.load(tmp_path / "iv", model=other)
    with pytest.raises(hs.ModelMismatchError):
        with make_iv(gemma_tiny).applied(tiny_bridge("gpt2")):
            pass


def test_missing_file_and_wrong_shape_are_named(gemma_tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        hs.Intervention.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"Δ has shape \(3, 12\), expected \[n_heads, d_head\] = \[4, 12\]"):
        hs.Intervention(torch.zeros(3, 12), LAYER, ModelSignature.of(gemma_tiny))
    with pytest.raises(ValueError, match="NaN"):
        hs.Intervention(torch.full((4, 12), float("nan")), LAYER, ModelSignature.of(gemma_tiny))


def test_artifact_paths_accept_either_suffix(tmp_path):
    assert artifact_paths(tmp_path / "a.json") == artifact_paths(tmp_path / "a") == artifact_paths(tmp_path / "a.safetensors")


def test_sum_and_scale_act_like_their_deltas(gemma_tiny):
    a, b = make_iv(gemma_tiny, seed=1), make_iv(gemma_tiny, seed=2)
    assert torch.equal((a + b).delta, a.delta + b.delta)
    assert torch.equal((2.0 * a).delta, 2 * a.delta) and torch.equal((a * 2).delta, 2 * a.delta)
    tokens = batch(gemma_tiny, "left")
    torch.testing.assert_close(run(gemma_tiny, tokens, [a + b]), run(gemma_tiny, tokens, [a, b]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(run(gemma_tiny, tokens, [a]), run(gemma_tiny, tokens, [2 * a]))


def test_adding_interventions_at_different_layers_is_refused(gemma_tiny):
    a = make_iv(gemma_tiny)
    b = hs.Intervention(a.delta, LAYER + 1, a.model)
    with pytest.raises(ValueError, match="cannot add interventions at layer 1"):
        a + b


def test_repr_names_the_heads(gemma_tiny):
    iv = make_iv(gemma_tiny, head=3)
    assert iv.active_heads() == [3]
    assert "hook='blocks.1.attn.hook_z'" in repr(iv) and "zeros=75%" in repr(iv)
