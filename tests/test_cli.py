"""The command line on a tiny local model: fit writes an intervention and metrics; eval reads it."""

import json

import pytest

from headsteer.cli import main
from tests.helpers import save_tiny_model

FAST = ["--layer", "1", "--steps", "3", "--lr", "0.5", "--max-test", "5"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model("gemma3", tmp_path_factory.mktemp("tiny-gemma")))


def test_fit_then_eval(model_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "antonym"
    assert main(["fit", "--model", model_dir, "--task", "builtin/antonym", "--out", str(out), *FAST]) == 0
    metrics = json.loads((tmp_path / "runs" / "antonym.metrics.json").read_text())
    assert metrics["n_train"] == 10 and metrics["n_test"] == 5 and metrics["layer"] == 1
    assert set(metrics["fitted"]) == {"first_token", "exact_match", "n"}
    assert (tmp_path / "runs" / "antonym.safetensors").is_file()
    assert len((tmp_path / "runs" / "antonym.history.csv").read_text().splitlines()) == 1 + 4
    scores = tmp_path / "scores.csv"
    args = ["eval", "--model", model_dir, "--task", "builtin/antonym", "--intervention", str(out), "--max-test", "5"]
    assert main([*args, "--out", str(scores)]) == 0
    assert "fitted:" in capsys.readouterr().out
    assert len(scores.read_text().splitlines()) == 1 + 5


def test_compare_prints_a_mean_std_table(model_dir, tmp_path, capsys):
    csv = tmp_path / "cmp.csv"
    args = ["compare", "--model", model_dir, "--task", "builtin/english-french", "--seeds", "0", "1", "--out", str(csv)]
    assert main([*args, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "fitted Δ" in printed and "±" in printed
    assert len(csv.read_text().splitlines()) == 1 + 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "9"], "layer 9 is out of range"),
        (["--task", "no-such-task", "--data-dir", "."], "unknown task 'no-such-task'"),
        (["--lr", "-1"], "lr must be"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "iv"
    args = ["fit", "--model", model_dir, "--task", "builtin/antonym", "--out", str(out), "--steps", "1", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_eval_refuses_a_mismatched_model(tmp_path, capsys):
    gpt2_dir = str(save_tiny_model("gpt2", tmp_path / "gpt2"))
    gemma_dir = str(save_tiny_model("gemma3", tmp_path / "gemma"))
    out = tmp_path / "iv"
    assert main(["fit", "--model", gemma_dir, "--task", "builtin/antonym", "--out", str(out), *FAST]) == 0
    assert main(["eval", "--model", gpt2_dir, "--task", "builtin/antonym", "--intervention", str(out)]) == 2
    assert "does not fit this model" in capsys.readouterr().err


def test_sweep_writes_a_resumable_csv(model_dir, tmp_path, capsys):
    out = tmp_path / "sweep.csv"
    args = ["sweep", "--model", model_dir, "--task", "builtin/antonym", "--layers", "0-1", "--seeds", "2",
            "--out", str(out), "--steps", "2", "--max-test", "4"]
    assert main(args) == 0
    assert len(out.read_text().splitlines()) == 1 + 4
    assert main(args) == 0  # everything done: nothing refitted, same file
    assert len(out.read_text().splitlines()) == 1 + 4
    assert "first_token" in capsys.readouterr().out


def test_lr_defaults_to_the_chosen_optimizers_step(model_dir, tmp_path):
    from headsteer.config import DEFAULT_LR

    out = tmp_path / "fista"
    args = ["fit", "--model", model_dir, "--task", "builtin/antonym", "--out", str(out), "--optimizer", "fista"]
    assert main([*args, "--layer", "1", "--steps", "2", "--max-test", "3"]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["fit_config"]["optimizer"] == "fista" and saved["fit_config"]["lr"] == DEFAULT_LR["fista"]
