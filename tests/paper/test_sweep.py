"""Layer sweeps: one row per cell, resumable after a crash, refusing mixed settings or data, safe to share."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest

import headsteer as hs
from headsteer.errors import ConfigError, ResultsFileError
from headsteer.files import settings_path
from headsteer.paper import sweep as sweep_module
from headsteer.paper.results import MalformedRowWarning
from headsteer.paper.sweep import COLUMNS, sweep
from headsteer.runs import fit_and_score
from tests.helpers import REPO, save_tiny_model, tiny_bridge

ROOT = REPO

QA = hs.get_template("qa")
TASK = hs.load_task("builtin/antonym")
CONFIG = hs.FitConfig(steps=3, lr=0.5)
CONSTANT = hs.Task("constant", tuple(hs.Pair(p.input, "cold") for p in TASK.pairs), "every answer is cold")
METRICS = ["first_token", "exact_match"]


def test_each_cell_is_one_seeded_fit_scored_on_its_held_out_pairs(gemma_kinds):
    """On a task whose answer is always "cold", Δ learns it at some layers: the cells' scores differ."""
    table = sweep(gemma_kinds, CONSTANT, QA, layers=[0, 2], seeds=[0, 1], config=CONFIG, max_test=6, progress=False)
    assert list(table.columns) == COLUMNS
    assert list(zip(table.layer, table.seed)) == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert (table.n_train == 10).all() and (table.n_test == 6).all()
    for row in table.itertuples():
        config = replace(CONFIG, layer=row.layer, seed=row.seed)
        run = fit_and_score(gemma_kinds, CONSTANT, QA, config, n_train=10, max_test=6, progress=False)
        assert (row.first_token, row.exact_match) == tuple(run.fitted[METRICS].mean()), row
        assert (row.zero_shot_first_token, row.zero_shot_exact_match) == tuple(run.zero_shot[METRICS].mean()), row
        assert row.final_task_loss == pytest.approx(run.result.history["task_loss"].iloc[-1], rel=1e-4)
        assert row.active_heads == len(run.result.intervention.active_heads())
    assert table.first_token.nunique() > 1 and table.first_token.max() > table.zero_shot_first_token.max()


def test_all_layers_are_scored_at_once_row_for_row_as_each_alone(gemma_tiny):
    """One batch of every layer's Δ on the held-out prompts (each prompt's prefix run once) gives each Δ's own
    predictions, in the Δ's order, across several batches."""
    train, test = hs.split_task(TASK, n_train=10, seed=0)
    configs = [replace(CONFIG, layer=0), replace(CONFIG, layer=1), replace(CONFIG, layer=1, lr=0.05)]
    ivs = [hs.fit(gemma_tiny, train, QA, config, progress=False).intervention for config in configs]
    together = sweep_module._score_all(gemma_tiny, test, QA, ivs, max_new_tokens=4, whole_predictions=True)
    alone = [hs.evaluate_pairs(gemma_tiny, test, QA, [iv], max_new_tokens=4, progress=False) for iv in ivs]
    assert len(test) * len(ivs) > 128  # more rows than one batch holds
    assert alone[0]["prediction"].tolist() != alone[1]["prediction"].tolist()  # so a mix-up of rows would show
    pd.testing.assert_frame_equal(together, pd.concat(alone, ignore_index=True))
    # As the sweep scores (wrong answers stop early): the same metrics.
    short = sweep_module._score_all(gemma_tiny, test, QA, ivs, max_new_tokens=4)
    metrics = ["first_token", "exact_match"]
    pd.testing.assert_frame_equal(short[metrics], together[metrics])


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
        sweep(
            gemma_tiny,
            TASK,
            QA,
            layers=[0],
            seeds=[0],
            config=hs.FitConfig(steps=4),
            max_test=4,
            out=out,
            progress=False,
        )


def test_sweep_can_fit_with_the_naive_reference(gemma_tiny, monkeypatch):
    calls = []
    real = sweep_module.naive_scored_logits
    monkeypatch.setattr(sweep_module, "naive_scored_logits", lambda *a: calls.append(1) or real(*a))
    naive = sweep(gemma_tiny, TASK, QA, layers=[1], seeds=[0], config=CONFIG, max_test=4, progress=False, fast=False)
    assert calls, "fast=False must fit with the naive forward"
    fast = sweep(gemma_tiny, TASK, QA, layers=[1], seeds=[0], config=CONFIG, max_test=4, progress=False)
    assert naive.final_task_loss.tolist() == pytest.approx(fast.final_task_loss.tolist(), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    "layers, seeds, message",
    [
        ([0, 0], [0], r"layers \[0, 0\] name \[0\] more than once"),
        ([0], [1, 2, 1], r"seeds \[1, 2, 1\] name \[1\] more than once"),
        ([], [0], "no layers given"),
        ([0], range(0), "no seeds given"),
        ([1, 3], [0], r"layers \[3\] are out of range; the model has layers 0..2"),
    ],
)
def test_empty_repeated_or_missing_layers_and_seeds_are_refused_before_any_work(
    gemma_tiny, tmp_path, layers, seeds, message
):
    out = tmp_path / "sweep.csv"
    with pytest.raises(ConfigError, match=message):
        sweep(gemma_tiny, TASK, QA, layers=layers, seeds=seeds, config=CONFIG, max_test=4, out=out, progress=False)
    assert not list(tmp_path.iterdir())


def test_a_truncated_last_row_is_not_done_and_is_recomputed(gemma_tiny, tmp_path, monkeypatch):
    out = tmp_path / "sweep.csv"
    sweep(gemma_tiny, TASK, QA, layers=[0], seeds=[0, 1], config=CONFIG, max_test=4, out=out, progress=False)
    complete = out.read_text()
    out.write_text(complete[: complete.rindex(",")])  # the last row lost its last field and its newline
    calls, real = [], sweep_module._run_seed
    monkeypatch.setattr(sweep_module, "_run_seed", lambda *a: calls.append(a[5]) or real(*a))
    with pytest.warns(MalformedRowWarning, match=f"{out}: line 3 is not a complete row"):
        table = sweep(
            gemma_tiny, TASK, QA, layers=[0], seeds=[0, 1], config=CONFIG, max_test=4, out=out, progress=False
        )
    assert calls == [1] and len(table) == 2
    assert out.read_text() == complete  # the same cell, recomputed the same way


def test_another_task_file_under_the_same_name_is_refused(gemma_tiny, tmp_path):
    english, french = tmp_path / "english", tmp_path / "french"
    for folder, source in ((english, "builtin/antonym"), (french, "builtin/english-french")):
        folder.mkdir()
        pairs = [{"input": p.input, "output": p.output} for p in hs.load_task(source).pairs]
        (folder / "antonym.json").write_text(json.dumps(pairs))
    out = tmp_path / "sweep.csv"
    sweep(gemma_tiny, hs.load_task("antonym", english), QA, [0], [0], CONFIG, max_test=4, out=out, progress=False)
    with pytest.raises(ResultsFileError, match=r"task data for 'antonym' differs \(read from .*french/antonym.json"):
        sweep(gemma_tiny, hs.load_task("antonym", french), QA, [1], [0], CONFIG, max_test=4, out=out, progress=False)
    assert len(pd.read_csv(out)) == 1


def test_a_csv_without_its_settings_is_refused_not_relabelled(gemma_tiny, tmp_path):
    out = tmp_path / "sweep.csv"
    sweep(gemma_tiny, TASK, QA, layers=[0], seeds=[0], config=CONFIG, max_test=4, out=out, progress=False)
    settings_path(out).unlink()
    with pytest.raises(ResultsFileError, match="exists without its settings file"):
        sweep(
            gemma_tiny,
            TASK,
            QA,
            layers=[0],
            seeds=[0],
            config=hs.FitConfig(steps=5),
            max_test=4,
            out=out,
            progress=False,
        )
    assert not settings_path(out).exists()


def test_another_checkpoint_under_the_same_model_name_is_refused(gemma_tiny, tmp_path):
    out = tmp_path / "sweep.csv"
    sweep(gemma_tiny, TASK, QA, layers=[0], seeds=[0], config=CONFIG, max_test=4, out=out, progress=False)
    other = tiny_bridge("gemma3", seed=1)
    assert other.cfg.model_name == gemma_tiny.cfg.model_name
    with pytest.raises(ResultsFileError, match=r"other settings \(model\): model differs \(fingerprint: "):
        sweep(other, TASK, QA, layers=[1], seeds=[0], config=CONFIG, max_test=4, out=out, progress=False)


def test_the_configs_own_layer_and_seed_are_not_settings(gemma_tiny, tmp_path):
    out = tmp_path / "sweep.csv"
    sweep(gemma_tiny, TASK, QA, layers=[0], seeds=[0], config=CONFIG, max_test=4, out=out, progress=False)
    table = sweep(
        gemma_tiny,
        TASK,
        QA,
        layers=[1],
        seeds=[0],
        config=replace(CONFIG, layer=2, seed=7),
        max_test=4,
        out=out,
        progress=False,
    )
    assert list(table["layer"]) == [1] and len(pd.read_csv(out)) == 2


# The command line in its own process. Its first fit waits until every process has read the results file
# (so each holds an earlier copy of it when it writes: without the merge under a lock, one loses the other's rows).
CLI_AFTER_BARRIER = """
import sys, time
from pathlib import Path
from headsteer import cli
from headsteer.paper import sweep
me, everyone = Path(sys.argv[1]), [Path(p) for p in sys.argv[2].split(",")]
real = sweep._run_seed

def run_seed(*args):
    me.touch()
    while not all(p.exists() for p in everyone):
        time.sleep(0.01)
    return real(*args)

sweep._run_seed = run_seed
sys.exit(cli.main(sys.argv[3:]))
"""


def test_two_sweep_processes_on_one_out_keep_every_cell(tmp_path):
    model, out = save_tiny_model("gemma3", tmp_path / "model"), tmp_path / "sweep.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [
        "sweep",
        "--model",
        str(model),
        "--task",
        "builtin/antonym",
        "--seeds",
        "3",
        "--steps",
        "2",
        "--max-test",
        "3",
        "--out",
        str(out),
    ]
    started = [tmp_path / f"started{layer}" for layer in ("0", "1")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLI_AFTER_BARRIER, str(mine), ",".join(map(str, started)), *args, "--layers", layer],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mine, layer in zip(started, ("0", "1"))
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    saved = pd.read_csv(out)
    assert sorted(zip(saved["layer"], saved["seed"])) == [(layer, s) for layer in (0, 1) for s in (0, 1, 2)]
    sibling = tmp_path / "sibling"
    sibling.write_text("")
    for path in (out, settings_path(out)):
        assert path.stat().st_mode & 0o777 == sibling.stat().st_mode & 0o777, path
