"""Experiments on Ray workers: the same rows as in one process, and a killed worker loses and duplicates nothing.

A local Ray cluster started by the test (loopback only, 2 CPUs) runs two
actors, each loading a tiny saved model once; the driver compares their rows
with the same experiment run in this process on the same saved model.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch

import headsteer as hs
from headsteer import cli
from headsteer.errors import ConfigError
from headsteer.files import settings_path
from headsteer.paper.results import MalformedRowWarning
from headsteer.paper.study_files import TABLES
from headsteer.paper.sweep import sweep
from headsteer.paper.table import TableConfig, build_table
from headsteer.paper.workers import ModelInfo, ModelSource, RayConfig, RayWorkers, Workers
from tests.helpers import REPO, save_tiny_model

QA = hs.get_template("qa")
TASK = hs.load_task("builtin/antonym")
CONFIG = hs.FitConfig(steps=3, lr=0.5)


ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode (its default off Linux)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Path]:
    """A loopback-only local cluster of 2 CPUs; yields a saved tiny model both sides load."""
    model = save_tiny_model("gemma3", tmp_path_factory.mktemp("model"))
    saved = {k: os.environ.get(k) for k in (*ENVIRONMENT, "PYTHONPATH", LOOPBACK)}
    # Workers inherit the driver's environment: they import this checkout (and this test module) at 1 thread.
    os.environ.update(ENVIRONMENT, PYTHONPATH=str(REPO))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the driver's reference rows at the workers' thread count: same summation order
    os.environ[LOOPBACK] = "0"  # read when ray is first imported: one node, every socket on 127.0.0.1
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
    yield model
    ray.shutdown()
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def local(cluster):
    return hs.load_model(str(cluster))


@pytest.fixture(scope="module")
def workers(cluster) -> Iterator[RayWorkers]:
    pool = RayWorkers(ModelSource(str(cluster)), RayConfig(n_workers=2, threads=1))
    yield pool
    pool.shutdown()


def by_key(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    return frame.sort_values(key).reset_index(drop=True)


def test_the_workers_hold_the_model_the_driver_would_load(workers, local):
    assert workers.model == ModelInfo.of(local)


def test_a_sweep_on_ray_equals_the_sweep_in_one_process_row_for_row(workers, local, tmp_path):
    args = dict(layers=[0, 2], seeds=[0, 1, 2], config=CONFIG, max_test=4, progress=False)
    here = sweep(local, TASK, QA, out=tmp_path / "here.csv", **args)
    there = sweep(workers, TASK, QA, out=tmp_path / "there.csv", **args)
    pd.testing.assert_frame_equal(there, here)
    on_disk = [by_key(pd.read_csv(tmp_path / f"{name}.csv"), ["layer", "seed"]) for name in ("here", "there")]
    pd.testing.assert_frame_equal(*on_disk)
    assert settings_path(tmp_path / "here.csv").read_text() == settings_path(tmp_path / "there.csv").read_text()


def test_a_table_on_ray_equals_the_table_in_one_process_row_for_row(workers, local, tmp_path):
    config = TableConfig(max_test=4, layer=1, fit_steps=3, methods=("0-shot", "Δ (ours)", "Δ unregularized"))
    tasks = [TASK, hs.load_task("builtin/english-french")]
    here = build_table(local, tasks, QA, [0, 1], config, out=tmp_path / "here.csv", progress=False)
    there = build_table(workers, tasks, QA, [0, 1], config, out=tmp_path / "there.csv", progress=False)
    key = ["task", "method", "seed"]
    pd.testing.assert_frame_equal(by_key(there, key), by_key(here, key))
    predictions = [pd.read_csv(tmp_path / f"{name}.predictions.csv") for name in ("here", "there")]
    pd.testing.assert_frame_equal(*(by_key(p, [*key, "input"]) for p in predictions))


def _kill_first_try(marker: Path, seed: int, work: Callable, model, unit) -> Iterable:
    """``work``, except that the first worker given ``seed``'s unit dies (SIGKILL) halfway through it."""
    results = list(work(model, unit))
    if unit.seed == seed and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return results


class KillingOnce(Workers):
    """Ray workers whose process running one seed is killed once, after computing it but before returning it."""

    def __init__(self, inner: RayWorkers, marker: Path, seed: int) -> None:
        self.inner, self.marker, self.seed = inner, marker, seed

    @property
    def model(self) -> ModelInfo:
        return self.inner.model

    def run(self, units: Sequence, work: Callable, done: Callable) -> None:
        self.inner.run(units, partial(_kill_first_try, self.marker, self.seed, work), done)


def test_a_killed_worker_loses_no_cell_and_duplicates_none(workers, local, tmp_path):
    args = dict(layers=[0, 1], seeds=[0, 1, 2, 3], config=CONFIG, max_test=3, progress=False)
    marker = tmp_path / "killed"
    with warnings.catch_warnings():
        warnings.simplefilter("error", MalformedRowWarning)
        there = sweep(KillingOnce(workers, marker, seed=1), TASK, QA, out=tmp_path / "there.csv", **args)
    assert marker.exists(), "a worker was killed mid-run"
    here = sweep(local, TASK, QA, out=tmp_path / "here.csv", **args)
    pd.testing.assert_frame_equal(there, here)
    saved = pd.read_csv(tmp_path / "there.csv")
    assert sorted(zip(saved.layer, saved.seed)) == [(layer, s) for layer in (0, 1) for s in range(4)]


def test_rerunning_on_ray_resumes_from_the_results_file(workers, tmp_path):
    out, calls = tmp_path / "sweep.csv", []

    class Counting(Workers):
        @property
        def model(self) -> ModelInfo:
            return workers.model

        def run(self, units, work, done):
            calls.extend(unit.seed for unit in units)
            workers.run(units, work, done)

    args = dict(layers=[1], config=replace(CONFIG, steps=2), max_test=3, progress=False, out=out)
    sweep(Counting(), TASK, QA, seeds=[0], **args)
    table = sweep(Counting(), TASK, QA, seeds=[0, 1], **args)
    assert calls == [0, 1] and list(table.seed) == [0, 1]


def test_the_command_line_sends_cells_to_ray_with_the_same_results(cluster, workers, tmp_path, capsys):
    """``--ray`` (the cluster this process joined) gives the files a run in this process gives."""
    workers.shutdown()  # the command's own workers need the cluster's 2 CPUs (the fixture's restart when next used)
    common = ["--model", str(cluster), "--task", "builtin/antonym", "--steps", "2"]
    sweep_args = ["sweep", *common, "--layers", "0,1", "--seeds", "2", "--max-test", "3"]
    heads_args = ["heads", *common, "--layers", "0-1", "--resamples", "2", "--path-points", "2", "--path-steps", "2"]
    heads_args += ["--max-test", "3"]
    for name, ray_flags in (("here", []), ("there", ["--ray", "--ray-workers", "2", "--ray-threads", "1"])):
        assert cli.main([*sweep_args, "--out", str(tmp_path / f"{name}.csv"), *ray_flags]) == 0
        assert cli.main([*heads_args, "--out", str(tmp_path / f"{name}-heads"), *ray_flags]) == 0
    sweeps = [by_key(pd.read_csv(tmp_path / f"{name}.csv"), ["layer", "seed"]) for name in ("here", "there")]
    pd.testing.assert_frame_equal(*sweeps)
    here, there = tmp_path / "here-heads", tmp_path / "there-heads"
    files = sorted(p for p in here.rglob("*") if p.is_file() and p.name != "stability.json")  # it records timings
    assert {f"{name}.csv" for name in TABLES} <= {p.name for p in files}
    assert any(p.suffix == ".safetensors" for p in files)
    for file in files:
        assert file.read_bytes() == (there / file.relative_to(here)).read_bytes(), file.name


@pytest.mark.parametrize(("n_workers", "threads", "needed"), [(3, 1, 3), (1, 4, 4)])
def test_more_workers_than_the_cluster_can_place_are_refused_before_any_starts(cluster, n_workers, threads, needed):
    """Ray would wait forever for actors a 2-CPU cluster cannot place: refused at once, naming the flags."""
    pool = RayWorkers(ModelSource(str(cluster)), RayConfig(n_workers=n_workers, threads=threads))
    raised: list[BaseException] = []

    def run() -> None:
        try:
            pool.run([0, 1, 2], lambda model, unit: [unit], lambda result: None)
        except BaseException as err:  # handed to the test's thread
            raised.append(err)

    waiting = threading.Thread(target=run, daemon=True)
    waiting.start()
    waiting.join(timeout=60)  # without the check, Ray waits for the actors forever
    assert not waiting.is_alive(), "still waiting for Ray workers after 60 s instead of refusing them"
    message = rf"--ray-workers, --ray-threads\) need {needed} CPUs; this process's Ray cluster has 2"
    assert len(raised) == 1 and isinstance(raised[0], ConfigError), raised
    assert re.search(message, str(raised[0])), str(raised[0])
    assert pool._actors == []
