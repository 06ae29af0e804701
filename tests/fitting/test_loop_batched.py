"""Batched fits: one pass, the same Δ's and histories as fitting each job alone."""

import pandas as pd
import pytest
import torch

import headsteer as hs
from headsteer.fitting.loop import FitJob, fit_many

QA = hs.get_template("qa")
TASK = hs.load_task("builtin/antonym")


def jobs():
    out = []
    for k, (layer, seed, reg, lr) in enumerate([(0, 0, 0.01, 0.5), (2, 1, 0.05, 0.3), (1, 2, 0.0, 0.5)]):
        train, _ = hs.split_task(TASK, n_train=4 + k, seed=seed)  # different sizes too
        out.append(
            FitJob(tuple(train), hs.FitConfig(layer=layer, seed=seed, gamma=reg, lam=reg, lr=lr, steps=6), f"job{k}")
        )
    return out


@pytest.mark.parametrize("optimizer", ["prox_adam", "fista", "adam"])
def test_batched_fits_equal_sequential_fits(any_model, optimizer):
    batch = [FitJob(j.pairs, hs.FitConfig(**{**j.config.to_dict(), "optimizer": optimizer}), j.task) for j in jobs()]
    together = fit_many(any_model, batch, QA, progress=False, max_rows=5)  # chunks cross job boundaries
    for job, got in zip(batch, together):
        alone = hs.fit(any_model, job.pairs, QA, job.config, task=job.task, progress=False)
        torch.testing.assert_close(got.intervention.delta, alone.intervention.delta, rtol=1e-4, atol=1e-5)
        pd.testing.assert_frame_equal(got.history, alone.history, rtol=1e-4, atol=1e-5)
        assert got.intervention.layer == job.config.layer and got.intervention.task == job.task


def test_batched_fits_must_share_loss_optimizer_and_steps(gemma_tiny):
    a, b = jobs()[:2]
    other = FitJob(b.pairs, hs.FitConfig(layer=1, steps=7))
    with pytest.raises(ValueError, match="must share loss, optimizer and steps"):
        fit_many(gemma_tiny, [a, other], QA, progress=False)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        fit_many(gemma_tiny, [a, FitJob(b.pairs, hs.FitConfig(layer=9, steps=6))], QA, progress=False)
