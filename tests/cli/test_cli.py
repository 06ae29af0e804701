"""The command line on a tiny local model: fit writes an intervention and metrics; eval reads it.

Bad input exits 2 with one line naming the flag, file or pair, before the model's weights load and
before anything is written; any other exception keeps its traceback.
"""

import argparse
import json
import sys

import pandas as pd
import pytest
import torch

from headsteer import models
from headsteer.cli import build_parser, common, main
from headsteer.cli.flags import count
from headsteer.cli.options import as_typed
from headsteer.files import ArtifactPaths
from headsteer.tasks import Pair, Task, load_task, split_task
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
    assert set(metrics["fitted"]) == {"first_token", "exact_match", "run_on", "n"}
    assert (tmp_path / "runs" / "antonym.safetensors").is_file()
    assert len((tmp_path / "runs" / "antonym.history.csv").read_text().splitlines()) == 1 + 4
    scores = tmp_path / "scores.csv"
    args = ["eval", "--model", model_dir, "--task", "builtin/antonym", "--intervention", str(out), "--max-test", "5"]
    assert main([*args, "--out", str(scores)]) == 0
    assert "fitted:" in capsys.readouterr().out
    assert len(scores.read_text().splitlines()) == 1 + 5


def test_compare_prints_a_mean_std_table(model_dir, tmp_path, capsys):
    csv = tmp_path / "cmp.csv"
    args = ["compare", "--model", model_dir, "--task", "builtin/english-french", "--seeds", "2", "--out", str(csv)]
    assert main([*args, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "fitted Δ" in printed and "±" in printed
    assert len(csv.read_text().splitlines()) == 1 + 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "9"], "layer 9 is out of range"),
        (["--task", "no-such-task", "--data-dir", "."], "unknown task 'no-such-task'"),
        (["--lr", "-1"], "argument --lr: expected a finite number > 0"),
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


def test_heads_writes_a_head_map(model_dir, tmp_path, capsys):
    out = tmp_path / "heads"
    args = ["heads", "--model", model_dir, "--task", "builtin/antonym", "--out", str(out), "--layers", "0-1"]
    args += ["--steps", "3", "--resamples", "2", "--path-points", "2", "--path-steps", "2", "--max-test", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "stable heads" in printed and f"wrote {out}/" in printed
    heads = pd.read_csv(out / "heads.csv")
    assert len(heads) == 2 * 4 and heads["task"].eq("builtin/antonym").all()
    record = json.loads((out / "stability.json").read_text())
    assert record["settings"]["map_config"]["layers"] == [0, 1] and record["settings"]["max_test"] == 4


def test_sweep_writes_a_resumable_csv(model_dir, tmp_path, capsys):
    out = tmp_path / "sweep.csv"
    args = [
        "sweep",
        "--model",
        model_dir,
        "--task",
        "builtin/antonym",
        "--layers",
        "0-1",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--steps",
        "2",
        "--max-test",
        "4",
    ]
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


# ---- every bad input refused before the work, in one line naming the flag, file or pair ----------------
class WeightsReached(Exception):
    """Raised instead of loading weights: the command got past every check made before them."""


@pytest.fixture
def no_weights(monkeypatch):
    """Loading the model's weights fails the test: the refusal must come before them."""
    monkeypatch.setattr(models, "load_weights", lambda *a, **k: pytest.fail("the model's weights were loaded"))


@pytest.fixture
def stop_at_weights(monkeypatch):
    monkeypatch.setattr(models, "load_weights", lambda *a, **k: (_ for _ in ()).throw(WeightsReached()))


def refused(capsys, argv: list[str], *expected: str) -> str:
    """``main(argv)`` exits 2 with one line on stderr holding each expected text; returns the line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def write_task(path, pairs) -> str:
    path.write_text(json.dumps([{"input": i, "output": o} for i, o in pairs]))
    return str(path)


ANTONYMS = [(p.input, p.output) for p in load_task("builtin/antonym").pairs]


@pytest.mark.parametrize(
    "command, extra, expected",
    [
        ("fit", ["--max-test", "-1"], ["argument --max-test: expected a whole number >= 0, got -1"]),
        ("fit", ["--n-train", "0"], ["argument --n-train: expected a whole number >= 1, got 0"]),
        ("fit", ["--steps", "0"], ["argument --steps"]),
        ("fit", ["--gamma", "nan"], ["argument --gamma: expected a finite number >= 0, got 'nan'"]),
        ("fit", ["--loss", "option_kl"], ["argument --loss: invalid choice: 'option_kl'"]),
        ("fit", ["--template", "nope"], ["argument --template: invalid choice: 'nope'"]),
        ("sweep", ["--layers", "0,0"], ["argument --layers: layer 0 is given twice in '0,0'"]),
        ("sweep", ["--layers", "5-2"], ["argument --layers: range 5-2 in '5-2' is reversed"]),
        ("sweep", ["--layers", "x"], ["argument --layers: 'x' is not 'all'"]),
        ("sweep", ["--seeds", "0"], ["argument --seeds: expected a whole number >= 1, got 0"]),
        ("compare", ["--seeds", "0"], ["argument --seeds: expected a whole number >= 1, got 0"]),
        ("compare", ["--seeds", "1", "2"], ["unrecognized arguments: 2 (see headsteer compare --help)"]),  # a count
        ("eval", ["--intervention", "iv", "--n-train", "5"], ["unrecognized arguments: --n-train 5"]),
        ("sweep", ["--layer", "4"], ["unrecognized arguments: --layer 4"]),  # not taken for --layers
        ("compare", ["--seed", "4"], ["unrecognized arguments: --seed 4"]),  # not taken for --seeds
    ],
)
def test_bad_flags_are_refused_in_one_line_naming_the_flag(capsys, tmp_path, no_weights, command, extra, expected):
    argv = [command, "--model", "unused", "--task", "builtin/antonym", "--out", str(tmp_path / "o.csv"), *extra]
    refused(capsys, argv, f"headsteer {command}: error: ", *expected)
    assert not list(tmp_path.iterdir())


def test_a_missing_subcommand_or_flag_is_one_line(capsys):
    refused(capsys, [], "headsteer: error: the following arguments are required: COMMAND")
    refused(
        capsys,
        ["fit", "--task", "builtin/antonym"],
        "headsteer fit: error: the following arguments are required: --out",
    )
    refused(
        capsys,
        ["fit", "--task", "t", "--out", "o", "--layers", "3"],
        "headsteer fit: error: unrecognized arguments: --layers 3 (see headsteer fit --help)",
    )


def test_table_flags_that_repeat_are_refused(capsys, tmp_path, no_weights):
    refused(
        capsys,
        ["table", "--tasks", "antonym", "antonym", "--out", str(tmp_path / "t.csv")],
        "argument --tasks: antonym is given twice",
    )
    refused(
        capsys,
        ["compose", "--compose", "a", "b", "--compose", "a", "b", "--out", str(tmp_path / "c.csv")],
        "argument --compose: a b is given twice",
    )


@pytest.mark.parametrize(
    "command, extra, expected",
    [
        ("fit", ["--layer", "99"], "--layer 99 is out of range: model '{model}' has layers 0..2"),
        ("sweep", ["--layers", "0-3"], "--layers 0-3: layer 3 is out of range: this model has layers 0..2"),
        ("fit", ["--layer", "1", "--n-train", "60"], "task 'builtin/antonym' has 60 pairs: too few for n_train=60"),
        ("compare", ["--layer", "1", "--n-train", "60", "--seeds", "1"], "(lower --n-train)"),
        ("heads", ["--layers", "3"], "--layers 3: layer 3 is out of range"),
        ("heads", ["--gamma", "0.01", "--lam", "0.02"], "a head map needs γ = λ > 0"),
        ("heads", ["--threshold", "0.4"], "threshold must be in (0.5, 1]"),
        ("heads", ["--resamples", "3"], "resamples must be even"),
        ("heads", ["--n-train", "4"], "function vectors need 3 distinct pairs per resample"),
    ],
)
def test_checks_against_the_model_come_before_its_weights(
    capsys, tmp_path, model_dir, no_weights, command, extra, expected
):
    out = tmp_path / "out"
    argv = [command, "--model", model_dir, "--task", "builtin/antonym", "--out", str(out), *extra]
    refused(capsys, argv, expected.format(model=model_dir))
    assert not list(tmp_path.iterdir())


def test_table_checks_its_config_before_the_model(capsys, tmp_path, no_weights):
    refused(
        capsys,
        ["table", "--tasks", "builtin/antonym", "--n-train", "4", "--out", str(tmp_path / "t.csv")],
        "n_train must be >= 5 for 'Δ tuned (CV)'",
        "--n-train",
    )
    refused(
        capsys,
        ["table", "--tasks", "builtin/antonym", "--methods", "0-shot", "bogus", "--out", str(tmp_path / "t.csv")],
        "unknown methods ['bogus'] (--methods)",
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "command, out, expected",
    [
        ("sweep", "a_dir", "--out {tmp}/a_dir: is a directory, expected a file path"),
        ("fit", "a_dir", "--out {tmp}/a_dir: is a directory; give a path stem"),
        ("fit", "new_dir/", "--out {tmp}/new_dir/: ends with a path separator"),
        ("fit", "a_file/run", "--out {tmp}/a_file/run.safetensors: {tmp}/a_file is a file"),
        ("compare", "a_dir", "--out {tmp}/a_dir: is a directory"),
        ("heads", "a_file", "--out {tmp}/a_file: is a file, expected a folder"),
        ("sweep", "a_file/s.csv", "{tmp}/a_file is a file"),
    ],
)
def test_output_locations_are_checked_before_the_model(capsys, tmp_path, no_weights, command, out, expected):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("")
    before = sorted(tmp_path.rglob("*"))
    argv = [command, "--model", "unused", "--task", "builtin/antonym", "--out", f"{tmp_path}/{out}"]
    refused(capsys, argv, expected.format(tmp=tmp_path))
    assert sorted(tmp_path.rglob("*")) == before


def test_table_outputs_are_checked_with_their_siblings(capsys, tmp_path, no_weights):
    (tmp_path / "t.predictions.csv").mkdir()
    refused(
        capsys,
        ["table", "--tasks", "builtin/antonym", "--out", str(tmp_path / "t.csv")],
        f"--out {tmp_path}/t.predictions.csv: is a directory",
    )
    refused(
        capsys,
        ["table", "--tasks", "builtin/antonym", "--out", str(tmp_path / "u.md")],
        "the summary file would be the results file itself",
    )


def test_eval_checks_its_out_and_the_model_before_the_weights(capsys, tmp_path, model_dir, no_weights):
    import headsteer as hs
    from headsteer.intervention import Intervention
    from headsteer.models import ModelSignature

    stem = tmp_path / "iv"
    train, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=10, seed=0)
    record = hs.TrainingRecord.of_pairs(train)
    Intervention(torch.zeros(4, 12), 1, ModelSignature(model_dir, 3, 4, 12, 32), "antonym", training=record).save(stem)
    (tmp_path / "scores").mkdir()
    other = str(save_tiny_model("gpt2", tmp_path / "gpt2"))
    capsys.readouterr()
    args = ["eval", "--model", model_dir, "--task", "builtin/antonym", "--intervention", str(stem)]
    refused(capsys, [*args, "--out", str(tmp_path / "scores")], "--out", "is a directory")
    refused(
        capsys, [*args[:1], "--model", other, *args[3:]], "does not fit this model", f"name: trained on '{model_dir}'"
    )


def test_an_unknown_model_is_one_line_naming_it(capsys, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as here: no hub, and no retries
    refused(
        capsys,
        ["fit", "--model", "nonexistent-name", "--task", "builtin/antonym", "--out", str(tmp_path / "x")],
        "model 'nonexistent-name' is not a local folder",
        "names not on disk need the hub",
    )
    assert not list(tmp_path.iterdir())


def test_a_task_file_that_is_not_utf8_is_named(capsys, tmp_path, no_weights):
    path = tmp_path / "t.json"
    path.write_bytes('[{"input": "caf\xe9", "output": "x"}]'.encode("latin-1"))
    refused(
        capsys, ["fit", "--task", str(path), "--out", str(tmp_path / "x")], f"({path}) is not UTF-8 text: byte 0xe9"
    )


def test_a_long_pair_is_refused_by_name_before_the_model_and_the_limit_is_a_flag(
    capsys, tmp_path, model_dir, monkeypatch
):
    long_input = " ".join(["hot"] * 300)
    task = write_task(tmp_path / "t.json", [*ANTONYMS, (long_input, "cold")])
    argv = [
        "fit",
        "--model",
        model_dir,
        "--task",
        task,
        "--out",
        str(tmp_path / "x"),
        "--max-test",
        "0",
        "--layer",
        "1",
    ]
    monkeypatch.setattr(models, "load_weights", lambda *a, **k: pytest.fail("the model's weights were loaded"))
    refused(capsys, argv, "task 't': pair 'hot hot", "is 306 tokens long", "limit of 256", "--max-tokens")
    monkeypatch.setattr(models, "load_weights", lambda *a, **k: (_ for _ in ()).throw(WeightsReached()))
    with pytest.raises(WeightsReached):  # with a higher limit every check passes
        main([*argv, "--max-tokens", "400"])


def test_repeated_inputs_are_dropped_and_reported(capsys, tmp_path, model_dir, stop_at_weights):
    task = write_task(tmp_path / "t.json", ANTONYMS + ANTONYMS[:3])
    with pytest.raises(WeightsReached):
        main(["fit", "--model", model_dir, "--task", task, "--out", str(tmp_path / "x"), "--layer", "1"])
    assert (
        f"task 't': dropped 3 pairs whose input repeats an earlier pair's (the first is kept); "
        f"{len(ANTONYMS)} pairs remain" in capsys.readouterr().err
    )


def test_a_test_pair_that_breaks_the_prompt_boundary_is_refused_before_the_fit(
    capsys, tmp_path, model_dir, monkeypatch, no_weights
):
    from headsteer import prompts

    # "hot" + "ter" is the one word "hotter": the answer would merge with the prompt's last token.
    monkeypatch.setitem(prompts.TEMPLATES, "glued", prompts.Template("glued", "{input}", "{output}"))
    pairs = [(i, "ter" if i == "hot" else ". " + o) for i, o in ANTONYMS]  # "." keeps other answers apart
    train, _ = split_task(Task("t", tuple(Pair(*p) for p in pairs), "memory"), n_train=10, seed=0)
    assert "hot" not in {p.input for p in train}  # the fit itself would run: only scoring "hot" fails
    task = write_task(tmp_path / "t.json", pairs)
    argv = [
        "fit",
        "--model",
        model_dir,
        "--task",
        task,
        "--template",
        "glued",
        "--out",
        str(tmp_path / "x"),
        "--max-test",
        "0",
        "--layer",
        "1",
    ]
    refused(capsys, argv, "task 't': prompt 'hot' with answer 'ter'", "not a strict prefix")


def test_a_bug_keeps_its_traceback(model_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug deep inside")

    monkeypatch.setattr(sys.modules["headsteer.fitting.loop"], "optimize", broken)
    with pytest.raises(RuntimeError, match="a bug deep inside"):
        main(["fit", "--model", model_dir, "--task", "builtin/antonym", "--out", str(tmp_path / "x"), *FAST])
    monkeypatch.setattr(
        sys.modules["headsteer.fitting.loop"], "optimize", lambda *a, **k: (_ for _ in ()).throw(ValueError("x"))
    )
    with pytest.raises(ValueError):
        main(["fit", "--model", model_dir, "--task", "builtin/antonym", "--out", str(tmp_path / "x"), *FAST])


def test_ctrl_c_is_a_clean_exit(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "open_model", interrupted)
    assert main(["fit", "--task", "builtin/antonym", "--out", "unused-stem"]) == 130
    assert capsys.readouterr().err == "headsteer fit: interrupted\n"


def test_figures_checks_its_folders(capsys, tmp_path):
    refused(
        capsys,
        ["figures", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "f")],
        f"--results {tmp_path / 'none'}: no such folder",
    )
    (tmp_path / "f").write_text("")
    refused(
        capsys, ["figures", "--results", str(tmp_path), "--out", str(tmp_path / "f")], "is a file, expected a folder"
    )


def test_demo_checks_its_layer_before_the_weights(capsys, model_dir, no_weights):
    refused(capsys, ["demo", "--model", model_dir], f"--layer 4 is out of range: model '{model_dir}' has layers 0..2")


def test_a_folder_without_write_permission_is_refused_before_the_model(capsys, tmp_path, monkeypatch, no_weights):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else real(path, mode))
    refused(
        capsys,
        ["sweep", "--model", "unused", "--task", "builtin/antonym", "--out", str(tmp_path / "s.csv")],
        f"--out {tmp_path}/s.csv: no permission to write in {tmp_path}",
    )


def test_judge_settings_that_do_not_fit_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTEER_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")  # never reached: refused first
    monkeypatch.setenv("HEADSTEER_JUDGE_MODEL", "judge")
    argv = ["judge", str(tmp_path / "p.csv"), "--out", str(tmp_path / "v.csv"), "--queries", "3", "--min-yes", "4"]
    refused(capsys, argv, "need 1 <= min_yes <= queries (--min-yes, --queries), got min_yes=4, queries=3")
    monkeypatch.setenv("HEADSTEER_JUDGE_BASE_URL", "ftp://x")
    refused(capsys, argv[:4], "judge base_url must start with http:// or https://, got 'ftp://x'")


# ---- the demo, the main job --------------------------------------------------------------------------
def test_demo_prints_the_before_after_table_and_both_metrics(model_dir, capsys):
    assert main(["demo", "--model", model_dir, "--layer", "1", "--steps", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "zero-shot" in line and "with Δ" in line)
    assert header.split()[:2] == ["input", "target"]
    rows = lines[lines.index(header) + 1 : lines.index(header) + 11]
    assert len(rows) == 10 and all(row.strip() for row in rows)  # ten held-out pairs, before and after
    metrics = [line.split() for line in lines if "first-token accuracy" in line]
    assert [m[0] for m in metrics] == ["zero_shot", "fitted"]
    assert all("exact" in m and 0.0 <= float(m[3]) <= 1.0 for m in metrics)
    assert any(line.startswith("held-out pairs: ") for line in lines)


# ---- help: every option explained, defaults shown, written for users -----------------------------------
def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]


def test_every_option_of_every_subcommand_has_help():
    missing = [
        f"{name} {a.dest}" for name, p in subcommands().items() for a in options(p) if not (a.help or "").strip()
    ]
    assert not missing


def test_every_default_is_shown_in_the_help():
    for name, p in subcommands().items():
        text = " ".join(p.format_help().split())
        for action in options(p):
            if action.default is not None and action.option_strings:
                assert f"(default: {as_typed(action.default)})" in text, (name, action.dest)
    fit_help = " ".join(subcommands()["fit"].format_help().split())
    assert "--max-test N held-out pairs scored (0: all of them) (default: 100)" in fit_help
    assert "(default: 0-shot 10-shot '0-shot + FV'" in " ".join(subcommands()["table"].format_help().split())


def test_the_top_level_help_is_for_users(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "wiring" not in text and "argument parsing" not in text
    assert "headsteer demo" in text and "README.md" in text
    assert all(name in text for name in subcommands())


def test_fit_out_names_all_four_files():
    (out,) = (a for a in subcommands()["fit"]._actions if a.dest == "out")
    assert all(path.name in out.help for path in ArtifactPaths.of("OUT").all)


@pytest.mark.parametrize(
    "command, time",
    [
        ("table", "about 8 min per (task, seed)"),
        ("table", "4 tasks × 5 seeds, about 2 h 30 min"),
        ("sweep", "about 9 min per task"),
        ("compose", "about 21 min"),
        ("opinion", "about 49 min"),
        ("heads", "about 10 min per task and seed"),
        ("compare", "about 1 min per seed"),
        ("demo", "about 30 s"),
    ],
)
def test_long_commands_say_how_long_they_take(command, time):
    description = " ".join(subcommands()[command].description.split())
    assert time in description and "measured on a 2-core CPU with Gemma 3 270M" in description


# ---- each flag means one thing everywhere --------------------------------------------------------------
# Flags whose default differs between commands, and why.
DEFAULTS_DIFFER = {
    "--seeds": "compare runs 3 seeds, the paper's experiments 5",
    "--seed": "eval's default is the seed the intervention records",
    "--task": "the demo's default task is builtin/antonym; elsewhere it is required",
    "--out": "a stem, a results CSV, a folder: each command writes its own kind",
    "--help": "argparse's",
    "--loss": "Δ's loss everywhere; opinion fits answer options (the paper's KL), the others pairs",
}


def test_a_flag_has_one_type_and_one_default_in_every_command():
    seen: dict[str, argparse.Action] = {}
    for name, p in subcommands().items():
        for action in p._actions:
            for flag in action.option_strings:
                first = seen.setdefault(flag, action)
                assert action.type is first.type and action.dest == first.dest, (name, flag)
                if flag not in DEFAULTS_DIFFER:
                    assert action.default == first.default, (name, flag, action.default, first.default)
    assert seen["--max-test"].default == 100


def test_seeds_is_a_count_in_every_command():
    for name, p in subcommands().items():
        for action in p._actions:
            if "--seeds" in action.option_strings:
                assert action.type is count and action.nargs is None, name


def test_flag_defaults_are_the_configs_defaults():
    from headsteer.cli.experiments import map_config, table_config
    from headsteer.cli.options import fit_config
    from headsteer.config import FitConfig
    from headsteer.heads.maps import MapConfig
    from headsteer.paper.table import TableConfig

    parser = build_parser()
    for command in ("fit", "compare"):
        args = parser.parse_args([command, "--task", "t", "--out", "o"])
        assert fit_config(args, seed=0) == FitConfig(), command
    assert map_config(parser.parse_args(["heads", "--task", "t"]), [0, 1]) == MapConfig(layers=(0, 1))
    assert table_config(parser.parse_args(["table", "--out", "o"])) == TableConfig()
    max_test = {name: a.default for name, p in subcommands().items() for a in p._actions if a.dest == "max_test"}
    assert set(max_test) == {"fit", "eval", "compare", "sweep", "table", "compose", "opinion", "heads"}
    assert set(max_test.values()) == {TableConfig().max_test}


# ---- compare never replaces a results file -------------------------------------------------------------
def test_compare_refuses_an_existing_out_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "open_model", lambda *a: pytest.fail("the model was opened"))
    out = tmp_path / "antonym_layer4.csv"
    out.write_text("task,layer,seed\n")
    (tmp_path / "antonym_layer4-2.csv").write_text("")
    argv = ["compare", "--task", "builtin/antonym", "--seeds", "3", "--out", str(out)]
    refused(capsys, argv, f"--out {out}: already exists", f"give a new path, e.g. {tmp_path / 'antonym_layer4-3.csv'}")
    assert out.read_text() == "task,layer,seed\n"


def test_python_m_headsteer_cli_runs_the_command_line():
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "headsteer.cli", "demo", "--help"], capture_output=True, env=env)
    assert done.returncode == 0 and b"usage: headsteer demo" in done.stdout
