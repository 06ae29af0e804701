"""Held-out pairs: a saved intervention is never scored on an input it was trained on."""

import dataclasses
import json
import os

import pandas as pd
import pytest

import headsteer as hs
from headsteer.cli import main
from headsteer.errors import ArtifactError, ConfigError
from headsteer.runs import fit_and_score, heldout_pairs
from headsteer.training_record import TrainingRecord
from tests.helpers import save_tiny_model
from tests.test_hooks import make_iv

TASK = hs.load_task("builtin/antonym")


def with_record(model, record):
    iv = make_iv(model)
    return hs.Intervention(iv.delta, iv.layer, iv.model, "antonym", training=record)


def split_record(n_train, seed, task=TASK):
    return TrainingRecord.of_pairs(hs.split_task(task, n_train=n_train, seed=seed)[0]).with_split(task, n_train, seed)


def test_the_fits_own_split_is_redone_whatever_n_train_eval_would_default_to(gemma_tiny):
    held = heldout_pairs(TASK, with_record(gemma_tiny, split_record(n_train=20, seed=3)), max_test=None)
    train, test = hs.split_task(TASK, n_train=20, seed=3)
    assert list(held.pairs) == test and (held.split_seed, held.n_train, held.excluded, held.warning) == (3, 20, 0, None)
    assert not {p.input for p in train} & {p.input for p in held.pairs}
    assert len(heldout_pairs(TASK, with_record(gemma_tiny, split_record(20, 3)), max_test=5).pairs) == 5


def test_another_seed_or_data_file_never_lets_a_training_input_through(gemma_tiny, tmp_path):
    iv = with_record(gemma_tiny, split_record(n_train=20, seed=3))
    trained = {p.input for p in iv.training.pairs}
    reseeded = heldout_pairs(TASK, iv, seed=0)
    assert reseeded.split_seed == 0 and reseeded.excluded > 0 and not trained & {p.input for p in reseeded.pairs}
    other_file = tmp_path / "antonym.json"  # the same pairs in another order, plus one: another hash
    other_file.write_text(
        json.dumps(
            [{"input": p.input, "output": p.output} for p in TASK.pairs[::-1]] + [{"input": "wet", "output": "dry"}]
        )
    )
    other = hs.load_task(str(other_file))
    held = heldout_pairs(other, iv)
    assert not trained & {p.input for p in held.pairs} and held.excluded > 0
    assert "is not the data the intervention was fitted on" in held.warning and str(other_file) in held.warning


def test_pairs_given_directly_exclude_their_inputs_from_the_whole_task(gemma_tiny):
    given = (hs.Pair("hot", "cold"), hs.Pair("happy", "sad"), hs.Pair("wet", "dry"))
    held = heldout_pairs(TASK, with_record(gemma_tiny, TrainingRecord.of_pairs(given)))
    assert [p for p in TASK.pairs if p.input not in {"hot", "happy", "wet"}] == list(held.pairs)
    assert held.split_seed is None and held.excluded == len(TASK) - len(held.pairs)
    with pytest.raises(ConfigError, match="split seed 1: .* not on a seeded split"):
        heldout_pairs(TASK, with_record(gemma_tiny, TrainingRecord.of_pairs(given)), seed=1)


def test_an_intervention_without_training_inputs_cannot_be_scored(gemma_tiny):
    with pytest.raises(ArtifactError, match="records no training inputs"):
        heldout_pairs(TASK, make_iv(gemma_tiny))
    with pytest.raises(ArtifactError, match="holds no inputs .*10 pre-tokenised prompts"):
        heldout_pairs(TASK, with_record(gemma_tiny, TrainingRecord(n_examples=10)))


def test_a_record_must_be_the_split_it_claims():
    train, _ = hs.split_task(TASK, n_train=10, seed=0)
    with pytest.raises(
        ArtifactError, match="not the training part of task 'builtin/antonym' split with n_train=10, seed=1"
    ):
        TrainingRecord.of_pairs(train).with_split(TASK, n_train=10, seed=1)


@pytest.fixture(scope="module")
def run(gemma_tiny):
    config = hs.FitConfig(layer=1, steps=1, lr=0.5, seed=2)
    return fit_and_score(gemma_tiny, TASK, hs.get_template("qa"), config, n_train=20, max_test=3, progress=False)


def test_fit_and_score_records_its_split_and_eval_excludes_it(run, tmp_path):
    record = run.result.intervention.training
    assert record.pairs == tuple(run.train) and (record.split_seed, record.n_train) == (2, 20)
    assert (record.task_sha256, record.task_source) == (TASK.sha256, TASK.source)
    run.save(tmp_path / "iv")
    loaded = hs.Intervention.load(tmp_path / "iv")
    assert loaded.training == record
    held = heldout_pairs(TASK, loaded)
    assert not {p.input for p in run.train} & {p.input for p in held.pairs}


def test_a_run_save_that_fails_at_its_last_rename_leaves_all_four_files(run, tmp_path, monkeypatch):
    run.save(tmp_path / "iv")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["iv.history.csv", "iv.json", "iv.metrics.json", "iv.safetensors"]
    real, calls = os.replace, []

    def json_rename_fails(*args):
        calls.append(args)
        if len(calls) == 4:  # the intervention's JSON, written last
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(os, "replace", json_rename_fails)
    with pytest.raises(OSError, match="disk full"):
        dataclasses.replace(run, train=run.train[::-1]).save(tmp_path / "iv")  # other metrics: other bytes
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model("gemma3", tmp_path_factory.mktemp("tiny-gemma")))


def test_cli_eval_after_fit_with_20_training_pairs_scores_no_training_input(model_dir, tmp_path, capsys):
    out = tmp_path / "iv"
    fit = [
        "fit",
        "--model",
        model_dir,
        "--task",
        "builtin/antonym",
        "--out",
        str(out),
        "--n-train",
        "20",
        "--layer",
        "1",
        "--steps",
        "1",
        "--max-test",
        "3",
    ]
    assert main(fit) == 0
    train_inputs = set(json.loads((tmp_path / "iv.metrics.json").read_text())["train_inputs"])
    assert len(train_inputs) == 20
    scores = tmp_path / "scores.csv"
    evaluate = [
        "eval",
        "--model",
        model_dir,
        "--task",
        "builtin/antonym",
        "--intervention",
        str(out),
        "--max-test",
        "0",
        "--out",
        str(scores),
    ]  # no --n-train: the intervention's record (n_train 20) decides the split
    assert main(evaluate) == 0
    scored = set(pd.read_csv(scores, keep_default_na=False)["input"])
    assert scored and not scored & train_inputs
    assert "split seed 0, n_train 20" in capsys.readouterr().out


def test_cli_eval_refuses_an_intervention_without_a_record(model_dir, gemma_tiny, tmp_path, capsys):
    iv = make_iv(gemma_tiny)
    iv.save(tmp_path / "iv")
    args = ["eval", "--model", model_dir, "--task", "builtin/antonym", "--intervention", str(tmp_path / "iv")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--intervention {tmp_path / 'iv'}" in err and "records no training inputs" in err
