"""Layer sweeps: one row per cell, resumable after a crash, refusing mixed settings."""

import pytest

import headsteer as hs
from headsteer import sweep as sweep_module
from headsteer.sweep import COLUMNS, sweep

QA = hs.get_template("qa")
TASK = hs.load_task("builtin/antonym")
CONFIG = hs.FitConfig(steps=3, lr=0.5)


def test_sweep_gives_one_row_per_cell(gemma_tiny):
    table = sweep(gemma_tiny, TASK, QA, layers=[0, 2], seeds=[0, 1], config=CONFIG, max_test=6, progress=False)
    assert list(table.columns) == COLUMNS
    assert list(zip(table.layer, table.seed)) == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert (table.n_train == 10).all() and (table.n_test == 6).all()
    assert table.first_token.between(0, 1).all()


def test_a_killed_sweep_resumes_without_redoing_or_losing_cells(gemma_tiny, tmp_path, monkeypatch):
    out = tmp_path / "sweep.csv"
    real, calls = sweep_module._run_seed, []

    def crash_on_seed_1(model, task, template, config, layers, seed, *rest):
        calls.append((seed, tuple(layers)))
        if seed == 1:
            raise KeyboardInterrupt("killed")
        return real(model, task, template, config, layers, seed, *rest)

    monkeypatch.setattr(sweep_module, "_run_seed", crash_on_seed_1)
    with pytest.raises(KeyboardInterrupt):
        sweep(gemma_tiny, TASK, QA, layers=[0, 1], seeds=[0, 1], config=CONFIG, max_test=4, out=out, progress=False)
    written = out.read_text().splitlines()
    assert len(written) == 1 + 2, "seed 0's cells were written before the crash"

    monkeypatch.setattr(sweep_module, "_run_seed", real)
    calls.clear()
    monkeypatch.setattr(sweep_module, "_run_seed", lambda *a: calls.append(a[5]) or real(*a))
    table = sweep(gemma_tiny, TASK, QA, layers=[0, 1], seeds=[0, 1], config=CONFIG, max_test=4, out=out, progress=False)
    assert calls == [1], "only the unfinished seed is run again"
    assert len(table) == 4 and out.read_text().splitlines()[1:3] == written[1:3]


def test_resuming_with_other_settings_is_refused(gemma_tiny, tmp_path):
    out = tmp_path / "sweep.csv"
    sweep(gemma_tiny, TASK, QA, layers=[0], seeds=[0], config=CONFIG, max_test=4, out=out, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(config\)"):
        sweep(gemma_tiny, TASK, QA, layers=[0], seeds=[0], config=hs.FitConfig(steps=4), max_test=4, out=out, progress=False)


def test_sweep_can_fit_with_the_naive_reference(gemma_tiny, monkeypatch):
    calls = []
    real = sweep_module.naive_scored_logits
    monkeypatch.setattr(sweep_module, "naive_scored_logits", lambda *a: calls.append(1) or real(*a))
    naive = sweep(gemma_tiny, TASK, QA, layers=[1], seeds=[0], config=CONFIG, max_test=4, progress=False, fast=False)
    assert calls, "fast=False must fit with the naive forward"
    fast = sweep(gemma_tiny, TASK, QA, layers=[1], seeds=[0], config=CONFIG, max_test=4, progress=False)
    assert naive.final_task_loss.tolist() == pytest.approx(fast.final_task_loss.tolist(), rel=1e-4, abs=1e-5)
