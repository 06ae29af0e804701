"""The comparison table on a tiny model: every method runs, rows are tidy, a killed run resumes."""

import json
from dataclasses import replace

import pandas as pd
import pytest

import headsteer as hs
from headsteer.cli import main
from headsteer.errors import ResultsFileError
from headsteer.files import predictions_path, settings_path
from headsteer.paper import runner
from headsteer.paper.runner import summary_markdown
from headsteer.paper.table import METHODS, TableConfig, build_table
from headsteer.tasks import Task
from tests.helpers import save_tiny_model

QA = hs.get_template("qa")
SMALL = dict(max_test=4, fit_steps=3, peft_steps=2, fv_top_k=2, layer=1)


def test_every_method_gives_one_row_per_task_and_seed(gemma_tiny, tmp_path):
    task = hs.load_task("builtin/antonym")
    rows = build_table(gemma_tiny, [task], QA, [0, 1], TableConfig(**SMALL), tmp_path / "t.csv", progress=False)
    assert len(rows) == 2 * len(METHODS) and set(rows["method"]) == set(METHODS)
    assert rows["n_test"].eq(4).all() and rows["n_train"].eq(10).all()
    assert rows[["first_token", "exact_match"]].apply(lambda c: c.between(0, 1)).all().all()
    text = summary_markdown(rows, list(METHODS))
    assert "Exact match" in text and "± " in text and "Δ (ours)" in text


def test_a_killed_table_resumes_and_refuses_other_settings(gemma_tiny, tmp_path, monkeypatch):
    import headsteer.paper.table as table

    out, task = tmp_path / "t.csv", hs.load_task("builtin/antonym")
    config = TableConfig(**SMALL, methods=("0-shot", "Δ (ours)"))
    calls = []
    real = table.METHODS["Δ (ours)"]

    def dies_on_seed_1(cell):
        calls.append(cell.seed)
        if cell.seed == 1:
            raise KeyboardInterrupt
        return real(cell)

    monkeypatch.setitem(table.METHODS, "Δ (ours)", dies_on_seed_1)
    with pytest.raises(KeyboardInterrupt):
        build_table(gemma_tiny, [task], QA, [0, 1], config, out, progress=False)
    assert len(pd.read_csv(out)) == 3  # seed 0 both methods, seed 1's 0-shot
    predictions = pd.read_csv(predictions_path(out), keep_default_na=False)
    assert len(predictions) == 3 * 4 and set(predictions.columns) == set(runner.PREDICTION_COLUMNS)
    monkeypatch.setitem(table.METHODS, "Δ (ours)", real)
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


def test_table_config_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="unknown methods"):
        TableConfig(methods=("magic",))
    config = TableConfig(methods=("ICV", "LoRA"), fv_layer=3)
    assert TableConfig.from_dict(config.to_dict()) == config


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
