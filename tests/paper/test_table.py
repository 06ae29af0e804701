"""The comparison table on a tiny model: every method runs, rows are tidy, a killed run resumes."""

import json
import math
from dataclasses import replace

import pandas as pd
import pytest

import headsteer as hs
from headsteer.baselines.prompting import few_shot_template
from headsteer.cli import main
from headsteer.errors import ConfigError, ResultsFileError
from headsteer.files import predictions_path, settings_path
from headsteer.loss_choice import chosen_loss, cross_validate_losses
from headsteer.paper import table
from headsteer.paper.methods import DEFAULT_TABLE_METHODS, TABLE_METHODS
from headsteer.paper.summary import summary_markdown
from headsteer.paper.table import METHOD_RUNS, TableConfig, build_table
from headsteer.tasks import Task
from tests.helpers import save_tiny_model

QA = hs.get_template("qa")
SMALL = dict(max_test=4, fit_steps=3, peft_steps=2, fv_top_k=2, layer=1)


def test_every_method_gives_one_row_per_task_and_seed_as_its_definition_says(gemma_tiny, tmp_path, monkeypatch):
    task, out = hs.load_task("builtin/antonym"), tmp_path / "t.csv"
    fv_fits = []
    real_fv = table.fit_function_vector
    monkeypatch.setattr(table, "fit_function_vector", lambda *a, **k: fv_fits.append(1) or real_fv(*a, **k))
    rows = build_table(gemma_tiny, [task], QA, [0, 1], TableConfig(**SMALL), out, progress=False)
    assert len(rows) == 2 * len(DEFAULT_TABLE_METHODS) and set(rows["method"]) == set(DEFAULT_TABLE_METHODS)
    assert rows["n_test"].eq(4).all() and rows["n_train"].eq(10).all()
    assert len(fv_fits) == 2  # one function vector per cell, shared by its two "+ FV" methods
    # Seed 0's held-out answers, recomputed here from each method's definition.
    train, test = hs.split_task(task, n_train=10, seed=0, max_test=4)
    fit = hs.FitConfig(layer=1, steps=3, seed=0)

    def with_delta(config):
        return [hs.fit(gemma_tiny, train, QA, config, task.name, progress=False).intervention]

    expected = {
        "0-shot": hs.evaluate_pairs(gemma_tiny, test, QA, progress=False),
        "10-shot": hs.evaluate_pairs(gemma_tiny, test, few_shot_template(QA, train), progress=False),
        "Δ (ours)": hs.evaluate_pairs(gemma_tiny, test, QA, with_delta(fit), progress=False),
        "Δ unregularized": hs.evaluate_pairs(
            gemma_tiny, test, QA, with_delta(replace(fit, gamma=0.0, lam=0.0)), progress=False
        ),
    }
    saved = pd.read_csv(predictions_path(out), keep_default_na=False).query("seed == 0")
    for method, scores in expected.items():
        assert saved[saved["method"] == method]["prediction"].tolist() == scores["prediction"].tolist(), method
    assert expected["0-shot"]["prediction"].tolist() != expected["10-shot"]["prediction"].tolist()
    first = summary_markdown(rows, list(TABLE_METHODS)).split("\n\n")[1].splitlines()[2:]  # exact match's rows
    assert [line.split("|")[1].strip() for line in first] == list(DEFAULT_TABLE_METHODS)


def test_the_answer_methods_run_as_their_definitions_say(gemma_tiny, tmp_path):
    """The loss rows, the colon-template rows and the cross-validation evidence, recomputed by hand."""
    task, out = hs.load_task("builtin/antonym"), tmp_path / "t.csv"
    methods = tuple(m for m in TABLE_METHODS if m not in DEFAULT_TABLE_METHODS)
    config = TableConfig(**SMALL, methods=methods)
    rows = build_table(gemma_tiny, [task], QA, [0], config, out, progress=False)
    assert list(rows["method"]) == list(methods)
    train, test = hs.split_task(task, n_train=10, seed=0, max_test=4)
    colon, fit = hs.get_template("colon"), hs.FitConfig(layer=1, steps=3, seed=0)

    def answers(template, loss=None, shots=False):
        steering = (
            [hs.fit(gemma_tiny, train, template, replace(fit, loss=loss), task.name, progress=False).intervention]
            if loss
            else []
        )
        chosen = few_shot_template(template, train) if shots else template
        return hs.evaluate_pairs(gemma_tiny, test, chosen, steering, progress=False)["prediction"].tolist()

    cv = cross_validate_losses(gemma_tiny, train, QA, fit)
    expected = {
        "Δ first-token loss": answers(QA, "first_token"),
        "Δ sequence loss": answers(QA, "sequence"),
        "Δ loss by CV": answers(QA, chosen_loss(cv)),
        "0-shot (colon)": answers(colon),
        "10-shot (colon)": answers(colon, shots=True),
        "Δ first-token loss (colon)": answers(colon, "first_token"),
        "Δ sequence loss (colon)": answers(colon, "sequence"),
    }
    saved = pd.read_csv(predictions_path(out), keep_default_na=False)
    for method, predictions in expected.items():
        assert saved[saved["method"] == method]["prediction"].tolist() == predictions, method
    for loss, method in (
        ("first_token", "CV on training pairs: first-token loss"),
        ("sequence", "CV on training pairs: sequence loss"),
    ):
        evidence = saved[saved["method"] == method]
        assert sorted(evidence["input"]) == sorted(p.input for p in train), "the evidence rows are the training pairs"
        assert evidence["prediction"].tolist() == cv[cv["loss"] == loss]["prediction"].tolist()
    assert rows.set_index("method").loc["CV on training pairs: sequence loss", "n_test"] == 10


def test_the_light_method_names_and_the_table_runs_agree():
    assert tuple(METHOD_RUNS) == TABLE_METHODS


def test_the_penalty_of_the_table_config_reaches_its_delta(gemma_tiny, tmp_path):
    task, out = hs.load_task("builtin/antonym"), tmp_path / "t.csv"
    strong = TableConfig(**SMALL, gamma=1e3, lam=1e3, methods=("0-shot", "Δ (ours)", "Δ unregularized"))
    build_table(gemma_tiny, [task], QA, [0], strong, out, progress=False)
    saved = pd.read_csv(predictions_path(out), keep_default_na=False)
    zero, ours, unregularized = (saved[saved["method"] == m]["prediction"].tolist() for m in strong.methods)
    assert ours == zero != unregularized  # so strong a penalty leaves Δ at 0; without it Δ moves the answers
    with pytest.raises(ResultsFileError, match=r"config differs \(gamma: 0.01 here, 1000.0 in the file; lam"):
        build_table(gemma_tiny, [task], QA, [0], replace(strong, gamma=0.01, lam=0.01), out, progress=False)


def test_a_killed_table_resumes_and_refuses_other_settings(gemma_tiny, tmp_path, monkeypatch):
    out, task = tmp_path / "t.csv", hs.load_task("builtin/antonym")
    config = TableConfig(**SMALL, methods=("0-shot", "Δ (ours)"))
    calls = []
    real = table.METHOD_RUNS["Δ (ours)"]

    def dies_on_seed_1(cell):
        calls.append(cell.seed)
        if cell.seed == 1:
            raise KeyboardInterrupt
        return real(cell)

    monkeypatch.setitem(table.METHOD_RUNS, "Δ (ours)", dies_on_seed_1)
    with pytest.raises(KeyboardInterrupt):
        build_table(gemma_tiny, [task], QA, [0, 1], config, out, progress=False)
    assert len(pd.read_csv(out)) == 3  # seed 0 both methods, seed 1's 0-shot
    predictions = pd.read_csv(predictions_path(out), keep_default_na=False)
    columns = ["task", "method", "seed", "input", "target", "prediction", "first_token", "exact_match"]
    assert len(predictions) == 3 * 4 and list(predictions.columns) == columns
    monkeypatch.setitem(table.METHOD_RUNS, "Δ (ours)", real)
    rows = build_table(gemma_tiny, [task], QA, [0, 1], config, out, progress=False)
    assert len(rows) == 4 and calls == [0, 1]
    more = build_table(gemma_tiny, [task], QA, [0], replace(config, methods=("10-shot",)), out, progress=False)
    assert list(more["method"]) == ["10-shot"] and len(pd.read_csv(out)) == 5  # other methods join the same file
    predictions = pd.read_csv(predictions_path(out), keep_default_na=False)
    means = predictions.groupby(["task", "method", "seed"])["exact_match"].mean()
    saved = pd.read_csv(out).set_index(["task", "method", "seed"])["exact_match"]
    pd.testing.assert_series_equal(means.sort_index(), saved.sort_index(), check_names=False)
    with pytest.raises(ValueError, match="other settings"):
        build_table(gemma_tiny, [task], QA, [0, 1], TableConfig(**{**SMALL, "max_test": 5}), out, progress=False)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("methods", ("magic",), r"unknown methods \['magic'\]"),
        ("n_train", 2, "n_train must be >= 3"),
        ("max_test", 0, r"TableConfig.max_test must be an int >= 1, got 0"),
        ("layer", -1, r"TableConfig.layer must be an int >= 0, got -1"),
        ("fit_steps", 0, r"TableConfig.fit_steps must be an int >= 1, got 0"),
        ("gamma", -0.1, r"TableConfig.gamma must be a finite number >= 0, got -0.1"),
        ("lam", math.nan, r"TableConfig.lam must be a finite number >= 0, got nan"),
        ("fv_top_k", 0, r"TableConfig.fv_top_k must be an int >= 1, got 0"),
        ("fv_layer", -2, r"TableConfig.fv_layer must be an int >= 0, got -2"),
        ("icv_strength", math.inf, r"TableConfig.icv_strength must be a finite number, got inf"),
        ("peft_steps", 1.5, r"TableConfig.peft_steps must be an int >= 1, got 1.5"),
    ],
)
def test_table_config_names_the_field_at_fault(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TableConfig(**{field: value})


def test_cli_table_writes_csv_and_markdown(tmp_path, capsys):
    model = str(save_tiny_model("gemma3", tmp_path / "m"))
    out = tmp_path / "table.csv"
    args = [
        "table",
        "--model",
        model,
        "--tasks",
        "builtin/antonym",
        "--seeds",
        "1",
        "--methods",
        "0-shot",
        "10-shot",
        "--max-test",
        "3",
        "--layer",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert len(pd.read_csv(out)) == 2 and "10-shot" in out.with_suffix(".md").read_text()


def test_runs_on_fewer_or_other_tasks_share_the_file_when_their_data_match(gemma_tiny, tmp_path):
    out, config = tmp_path / "t.csv", TableConfig(**SMALL, methods=("0-shot",))
    antonym, french = hs.load_task("builtin/antonym"), hs.load_task("builtin/english-french")
    build_table(gemma_tiny, [antonym], QA, [0], config, out, progress=False)
    build_table(gemma_tiny, [french], QA, [0], config, out, progress=False)  # another task joins the file
    rows = build_table(gemma_tiny, [antonym, french], QA, [0, 1], config, out, progress=False)
    assert sorted(zip(rows["task"], rows["seed"])) == [
        (antonym.name, 0),
        (antonym.name, 1),
        (french.name, 0),
        (french.name, 1),
    ]
    recorded = json.loads(settings_path(out).read_text())["inputs"]
    assert {name: r["sha256"] for name, r in recorded.items()} == {
        antonym.name: antonym.sha256,
        french.name: french.sha256,
    }
    relabelled = Task(antonym.name, french.pairs, "elsewhere/antonym.json")
    with pytest.raises(
        ResultsFileError, match=r"task data for 'builtin/antonym' differs \(read from elsewhere/antonym.json"
    ):
        build_table(gemma_tiny, [relabelled], QA, [0], config, out, progress=False)
    assert len(pd.read_csv(out)) == 4
