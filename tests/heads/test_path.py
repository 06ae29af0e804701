"""The λ path by warm-started continuation: skipped fits are exactly zero, run fits are the continuation."""

import pytest
import torch

import headsteer as hs
from headsteer.fitting.loop import FitJob, fit_many
from headsteer.heads.entry import entry_strengths, pair_gradients
from headsteer.heads.path import PathSpec, continuation_path

QA = hs.get_template("qa")
TRAIN, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=6, seed=0)
SAMPLES = [tuple(TRAIN), tuple(TRAIN[:3])]
SPEC = PathSpec(hs.FitConfig(steps=50), steps=3, lr=0.2)


def setup(model, layers):
    grads, losses = pair_gradients(model, TRAIN, QA, layers)
    entry = torch.stack([entry_strengths(grads[: len(s)].mean(0)) for s in SAMPLES])  # samples are prefixes
    zero_loss = torch.stack([losses[: len(s)].mean() for s in SAMPLES])
    return entry, zero_loss


def test_a_layer_above_its_entry_strengths_is_written_as_the_zero_fit_it_is(gemma_tiny):
    layers = [0, 2]
    entry, zero_loss = setup(gemma_tiny, layers)
    top = float(entry[0].amax(-1).max())
    quiet = int(entry[0].amax(-1).argmin())  # the layer whose heads enter last
    between = float(entry[0, quiet].max()) * 1.5  # above the quiet layer's entry strengths
    assert between < top  # the other layer runs at this strength
    path = continuation_path(gemma_tiny, SAMPLES, QA, layers, [between], entry, zero_loss, SPEC, progress=False)
    rows = path[(path["sample"] == 0) & (path["layer"] == layers[quiet])]
    assert rows["norm"].eq(0).all() and rows["task_loss"].iloc[0] == pytest.approx(float(zero_loss[0]))
    config = hs.FitConfig(layer=layers[quiet], gamma=between, lam=between, steps=3, lr=0.2)
    fitted = fit_many(gemma_tiny, [FitJob(SAMPLES[0], config)], QA, progress=False)[0]
    assert fitted.intervention.delta.eq(0).all()  # the fit the path skipped: exactly zero at every step
    assert fitted.history["task_loss"].iloc[-1] == pytest.approx(float(zero_loss[0]), rel=1e-5)
    others = path[(path["sample"] == 0) & (path["layer"] == layers[1 - quiet])]
    assert others["norm"].gt(0).any()


def test_run_fits_continue_from_the_previous_strength(gemma_tiny):
    layers = [1]
    entry, zero_loss = setup(gemma_tiny, layers)
    grid = [float(entry.max()) * 0.9, float(entry.min()) * 0.5]  # the weaker one below every entry strength
    path = continuation_path(gemma_tiny, SAMPLES, QA, layers, grid, entry, zero_loss, SPEC, progress=False)
    state = None
    for s in grid:  # the same continuation by hand, for sample 1 if it runs at the first strength
        if float(entry[1].max()) <= s:
            assert path[(path["sample"] == 1) & (path["strength"] == s)]["norm"].eq(0).all()
            continue
        config = hs.FitConfig(layer=1, gamma=s, lam=s, steps=3, lr=0.2)
        state = fit_many(gemma_tiny, [FitJob(SAMPLES[1], config, init=state)], QA, progress=False)[0].intervention.delta
        got = path[(path["sample"] == 1) & (path["strength"] == s)].sort_values("head")["norm"]
        torch.testing.assert_close(
            torch.tensor(got.to_numpy(), dtype=torch.float32), state.norm(dim=-1), rtol=1e-4, atol=1e-6
        )
    assert state is not None  # the weaker strength ran
    with pytest.raises(ValueError, match="fall strictly"):
        continuation_path(gemma_tiny, SAMPLES, QA, layers, [0.1, 0.2], entry, zero_loss, SPEC, progress=False)


def test_the_progress_bar_counts_the_fits_each_strength_runs(gemma_tiny, monkeypatch):
    """Low strengths open more cells than high ones: the bar's total is the fits, so its ETA holds."""
    from headsteer.heads import path as path_module

    bars = []

    class Recorder:
        def __init__(self, total, **_):
            self.total, self.updates = total, []
            bars.append(self)

        def update(self, n):
            self.updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(path_module, "tqdm", Recorder)
    layers = [0, 2]
    entry, zero_loss = setup(gemma_tiny, layers)
    opens = entry.amax(-1)
    grid = [float(opens.max()) * 0.99, float(opens.min()) * 0.5]  # one cell open at the first, all four at the second
    continuation_path(gemma_tiny, SAMPLES, QA, layers, grid, entry, zero_loss, SPEC)
    (bar,) = bars
    assert bar.updates == [int((opens > s).sum()) for s in grid] and bar.updates[0] < bar.updates[1]
    assert bar.total == sum(bar.updates)
