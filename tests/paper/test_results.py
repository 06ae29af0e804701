"""Resumable results files: merged under a lock by many writer processes, complete rows only, settings by content."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from headsteer.errors import ResultsFileError
from headsteer.files import lock_path, predictions_path, settings_path
from headsteer.paper.results import InputHash, MalformedRowWarning, ResultsFile, Settings
from tests.helpers import REPO

ROOT = REPO
COLUMNS = ("task", "seed", "score")
PREDICTION_COLUMNS = ("task", "seed", "item", "value")
SETTINGS = Settings({"config": {"steps": 3}}, {"antonym": InputHash("task data", "a" * 64, "/data/antonym.json")})


def store(out: Path, settings: Settings = SETTINGS) -> ResultsFile:
    return ResultsFile(out, COLUMNS, ("task", "seed"), settings, prediction_columns=PREDICTION_COLUMNS)


def rows(task: str, seeds, score: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({"task": task, "seed": list(seeds), "score": score})


def predictions(task: str, seeds, value: str, n: int = 3) -> pd.DataFrame:
    return pd.DataFrame([(task, s, i, value) for s in seeds for i in range(n)], columns=PREDICTION_COLUMNS)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# A writer process: waits for GO (so all start together), then adds its rows one batch at a time.
WRITER = """
import sys, time
from pathlib import Path
from tests.paper.test_results import predictions, rows, store
out, worker, batches, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
results = store(out)
results.open()
Path(str(go) + "." + worker).touch()
while not go.exists():
    time.sleep(0.01)
for b in range(batches):
    results.add(rows(worker, [b]), predictions(worker, [b], worker))
    results.add(rows("shared", [0]), predictions("shared", [0], worker))  # every writer races for one key
"""


def test_concurrent_writer_processes_lose_nothing_and_duplicate_nothing(tmp_path):
    out, go, workers, batches = tmp_path / "r.csv", tmp_path / "go", ["w0", "w1", "w2"], 5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(out), w, str(batches), str(go)],
            env=subprocess_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in workers
    ]
    while not all(Path(f"{go}.{w}").exists() for w in workers):
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        time.sleep(0.05)
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0] * len(workers), [p.stderr.read() for p in procs]
    saved = pd.read_csv(out)
    expected = {(w, b) for w in workers for b in range(batches)} | {("shared", 0)}
    assert sorted(zip(saved["task"], saved["seed"])) == sorted(expected)  # each key once, none lost
    kept = pd.read_csv(predictions_path(out))
    assert kept.groupby(["task", "seed"]).size().eq(3).all() and len(kept) == 3 * len(expected)
    shared = kept[kept["task"] == "shared"]["value"]
    assert shared.nunique() == 1  # the shared key's predictions all come from one writer
    mine = kept[kept["task"] != "shared"]
    assert (mine["task"] == mine["value"]).all()


# A writer that dies by SIGKILL inside its Nth fsync: a temporary file is on disk, not yet renamed.
DIES_WRITING = """
import os, signal, sys
from pathlib import Path
from tests.paper.test_results import predictions, rows, store
out, n = Path(sys.argv[1]), int(sys.argv[2])
results = store(out)
results.open()
results.add(rows("antonym", [0]), predictions("antonym", [0], "first"))
calls, real = [], os.fsync
def fsync(fd):
    calls.append(fd)
    if len(calls) == n:
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd)
os.fsync = fsync
results.add(rows("antonym", [1]), predictions("antonym", [1], "killed"))
"""


@pytest.mark.parametrize("fsync_call, what", [(1, "predictions"), (2, "results")])
def test_a_writer_killed_mid_write_leaves_complete_files_and_the_next_writer_cleans_up(tmp_path, fsync_call, what):
    out = tmp_path / "r.csv"
    proc = subprocess.run(
        [sys.executable, "-c", DIES_WRITING, str(out), str(fsync_call)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    temps = sorted(p.name for p in tmp_path.glob(".*.tmp"))
    assert len(temps) == 1 and temps[0].startswith(f".{out.name}." if what == "results" else ".r.predictions.csv.")
    assert pd.read_csv(out).to_dict("list") == {"task": ["antonym"], "seed": [0], "score": [0.5]}
    results = store(out)
    assert len(results.open()) == 1  # the killed row is not done
    results.add(rows("antonym", [1], 0.7), predictions("antonym", [1], "again"))
    assert not list(tmp_path.glob(".*.tmp"))
    assert pd.read_csv(out)["score"].tolist() == [0.5, 0.7]
    kept = pd.read_csv(predictions_path(out))
    assert kept.groupby("value").size().to_dict() == {"again": 3, "first": 3}  # the killed writer's orphans are gone


LOOPING_WRITER = """
import sys
from pathlib import Path
from tests.paper.test_results import predictions, rows, store
from tests.helpers import REPO
out = Path(sys.argv[1])
results = store(out)
results.open()
for seed in range(10_000):
    results.add(rows("antonym", [seed]), predictions("antonym", [seed], "x" * 200, n=300))
"""


def test_a_kill_9_at_any_moment_leaves_only_complete_rows(tmp_path):
    out = tmp_path / "r.csv"
    proc = subprocess.Popen([sys.executable, "-c", LOOPING_WRITER, str(out)], env=subprocess_env())
    try:
        while not out.exists() or len(out.read_text().splitlines()) < 6:
            assert proc.poll() is None
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any malformed row would raise
        done = store(out).open()
    assert len(done) >= 5 and done["seed"].tolist() == list(range(len(done)))
    kept = pd.read_csv(predictions_path(out))
    finished = kept[kept["seed"].isin(done["seed"])]
    assert finished.groupby("seed").size().eq(300).all()
    store(out).add(rows("antonym", [len(done)]), predictions("antonym", [len(done)], "y"))
    assert not list(tmp_path.glob(".*.tmp"))
    assert set(pd.read_csv(predictions_path(out))["seed"]) == set(range(len(done) + 1))


def test_a_truncated_or_short_row_is_not_done_and_is_dropped_by_the_next_write(tmp_path):
    out = tmp_path / "r.csv"
    results = store(out)
    results.open()
    results.add(rows("antonym", [0, 1, 2]), predictions("antonym", [0, 1, 2], "v"))
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + "antonym,0\n" + lines[2] + lines[3][:-4])  # seed 0 lost a field, seed 2 was cut off
    with pytest.warns(MalformedRowWarning) as caught:
        done = results.rows()
    assert done["seed"].tolist() == [1]
    messages = [str(w.message) for w in caught]
    assert any(f"{out}: line 2 " in m for m in messages) and any(f"{out}: line 4 " in m for m in messages)
    with pytest.warns(MalformedRowWarning):
        results.add(rows("antonym", [0, 2], 0.9), predictions("antonym", [0, 2], "redo"))
    assert out.read_text().endswith("\n")
    assert pd.read_csv(out).sort_values("seed")["score"].tolist() == [0.9, 0.5, 0.9]
    kept = pd.read_csv(predictions_path(out))
    assert kept.groupby("seed")["value"].agg(set).to_dict() == {0: {"redo"}, 1: {"v"}, 2: {"redo"}}


def test_a_row_whose_key_is_on_disk_keeps_the_disk_row(tmp_path):
    out = tmp_path / "r.csv"
    results = store(out)
    results.open()
    results.add(rows("antonym", [0], 0.1), predictions("antonym", [0], "first"))
    merged = results.add(rows("antonym", [0, 1], 0.2), predictions("antonym", [0, 1], "second"))
    assert merged["score"].tolist() == [0.1, 0.2]
    kept = pd.read_csv(predictions_path(out))
    assert kept.groupby("seed")["value"].agg(set).to_dict() == {0: {"first"}, 1: {"second"}}


def test_a_results_file_without_settings_is_refused(tmp_path):
    out = tmp_path / "r.csv"
    rows("antonym", [0]).to_csv(out, index=False)
    with pytest.raises(ResultsFileError, match=f"{out} exists without its settings file r.csv.settings.json"):
        store(out).open()
    assert not settings_path(out).exists()


def test_an_old_format_sidecar_is_refused_and_named(tmp_path):
    out = tmp_path / "r.csv"
    settings_path(out).write_text(json.dumps({"task": "antonym", "config": {"steps": 3}}))
    with pytest.raises(ResultsFileError, match="older format"):
        store(out).open()


def test_other_settings_and_other_data_are_refused_naming_what_differs(tmp_path):
    out = tmp_path / "r.csv"
    store(out).open()
    other_config = Settings({"config": {"steps": 4}}, SETTINGS.inputs)
    with pytest.raises(
        ResultsFileError, match=r"other settings \(config\): config differs \(steps: 4 here, 3 in the file\)"
    ):
        store(out, other_config).open()
    other_data = Settings(SETTINGS.values, {"antonym": InputHash("task data", "b" * 64, "/french/antonym.json")})
    with pytest.raises(
        ResultsFileError,
        match=r"task data for 'antonym' differs \(read from /french/antonym.json, "
        r"sha256 bbbbbbbbbbbb… here; aaaaaaaaaaaa… in the file",
    ):
        store(out, other_data).open()


def test_runs_on_other_inputs_join_the_file_and_are_recorded(tmp_path):
    out = tmp_path / "r.csv"
    store(out).open()
    synonym = InputHash("task data", "c" * 64, "/data/synonym.json")
    store(out, Settings(SETTINGS.values, {"synonym": synonym})).open()  # a run on another task only
    recorded = Settings.read(settings_path(out))
    assert recorded.inputs == {**SETTINGS.inputs, "synonym": synonym}
    assert json.loads(settings_path(out).read_text())["inputs"]["synonym"]["sha256"] == "c" * 64  # readable JSON
    with pytest.raises(ResultsFileError, match="task data for 'synonym' differs"):
        store(out, Settings(SETTINGS.values, {"synonym": InputHash("task data", "d" * 64, "x")})).open()


def test_files_are_created_with_the_mode_of_any_new_file(tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "r.csv"
        results = store(out)
        results.open()
        results.add(rows("antonym", [0]), predictions("antonym", [0], "v"))
        (tmp_path / "sibling").write_text("x")
    finally:
        os.umask(old)
    expected = (tmp_path / "sibling").stat().st_mode & 0o777
    assert expected == 0o640
    for path in (out, predictions_path(out), settings_path(out), lock_path(out)):
        assert path.stat().st_mode & 0o777 == expected, path


def test_a_row_cut_inside_a_character_is_not_done(tmp_path):
    out, task = tmp_path / "r.csv", "english-french∘antonym"
    results = store(out)
    results.open()
    results.add(rows(task, [0, 1]), predictions(task, [0, 1], "v"))
    data = out.read_bytes()
    out.write_bytes(data[: data.rindex("∘".encode()) + 1])  # the last row ends in the first byte of "∘"
    with pytest.warns(MalformedRowWarning, match="line 3 is not a complete row"):
        assert results.rows()["seed"].tolist() == [0]
