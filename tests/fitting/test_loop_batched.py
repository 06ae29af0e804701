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


def test_a_warm_start_begins_at_init_and_batches_like_a_fit_alone(gemma_tiny):
    """``FitJob.init``: the first step is taken at the given Δ (its loss is the earlier fit's final loss),
    zeros are the default, the caller's tensor is left alone, and warm and cold jobs batch exactly."""
    first, cold = jobs()[:2]
    earlier = fit_many(gemma_tiny, [first], QA, progress=False)[0]
    start = earlier.intervention.delta.clone()
    warm = FitJob(first.pairs, first.config, first.task, init=earlier.intervention.delta)
    together = fit_many(gemma_tiny, [warm, cold], QA, progress=False, max_rows=5)
    assert together[0].history["task_loss"].iloc[0] == pytest.approx(earlier.history["task_loss"].iloc[-1], rel=1e-5)
    assert torch.equal(earlier.intervention.delta, start)  # init is copied, never updated in place
    alone = fit_many(gemma_tiny, [warm], QA, progress=False)[0]
    torch.testing.assert_close(together[0].intervention.delta, alone.intervention.delta, rtol=1e-4, atol=1e-5)
    zeros = FitJob(cold.pairs, cold.config, cold.task, init=torch.zeros_like(start))
    torch.testing.assert_close(
        fit_many(gemma_tiny, [zeros], QA, progress=False)[0].intervention.delta, together[1].intervention.delta
    )
    with pytest.raises(ValueError, match="init has shape"):
        fit_many(gemma_tiny, [FitJob(cold.pairs, cold.config, init=torch.zeros(2, 2))], QA, progress=False)
