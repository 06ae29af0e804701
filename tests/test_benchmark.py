"""The benchmark's hand-written loop fits the problem headsteer fits: the same Δ as headsteer's Adam."""

import importlib.util

import pytest
import torch

import headsteer as hs
from tests.helpers import REPO, tiny_hf_model


def test_the_hand_written_loop_fits_the_same_delta_as_headsteer(gemma_tiny, monkeypatch):
    spec = importlib.util.spec_from_file_location("fit_speed", REPO / "benchmarks" / "fit_speed.py")
    assert spec and spec.loader
    fit_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit_speed)
    train, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=10, seed=0)
    qa, fitted = hs.get_template("qa"), []

    class Recorded(torch.optim.Adam):
        def __init__(self, params, lr):
            params = list(params)
            fitted.extend(params)
            super().__init__(params, lr=lr)

    monkeypatch.setattr(fit_speed.torch.optim, "Adam", Recorded)
    plain = tiny_hf_model("gemma3")  # gemma_tiny's weights, no bridge around them: the researcher's own model
    fit_speed.hand_fit(plain, gemma_tiny.tokenizer, train, qa, layer=1, steps=5, gamma=0.0, lam=0.0, lr=0.05)
    config = hs.FitConfig(layer=1, steps=5, gamma=0.0, lam=0.0, optimizer="adam", lr=0.05)
    ours = hs.fit(gemma_tiny, train, qa, config, progress=False).intervention.delta
    torch.testing.assert_close(fitted[0].detach().view_as(ours), ours, rtol=1e-4, atol=1e-5)
    assert ours.abs().max() > 0.1, "Δ moved"


def test_the_bf16_benchmark_recomputes_a_fits_own_training_loss(gemma_tiny):
    """Its fp32 training loss of a fitted Δ is the loss the fit itself recorded for that Δ (its history's last row)."""
    spec = importlib.util.spec_from_file_location("bf16_weights", REPO / "benchmarks" / "bf16_weights.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    train, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=10, seed=0)
    qa, config = hs.get_template("qa"), hs.FitConfig(layer=1, steps=5)
    result = hs.fit(gemma_tiny, train, qa, config, progress=False)
    recomputed = bench.fp32_loss(gemma_tiny, train, qa, config, result.intervention.delta)
    recorded = float(result.history["task_loss"].iloc[-1])
    assert recorded > 0.1
    assert recomputed == pytest.approx(recorded, rel=1e-5)
