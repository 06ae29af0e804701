"""Composed tasks (outer∘inner): chaining, leak-free single-task training sets, the Table 2 methods."""

import pandas as pd
import pytest
import torch

import headsteer as hs
from headsteer.cli import main
from headsteer.errors import ResultsFileError
from headsteer.paper import composition
from headsteer.paper.composition import (
    METHOD_RUNS,
    ComposeConfig,
    build_compose_table,
    compose_settings,
    compose_tasks,
    single_task_train,
)
from headsteer.paper.methods import COMPOSE_METHODS
from headsteer.tasks import Pair, Task, TaskError
from tests.helpers import save_tiny_model

QA = hs.get_template("qa")
SMALL = ComposeConfig(n_train=4, max_test=5, layer=1, fit_steps=3)


def _task(name, pairs):
    return Task(name, tuple(Pair(a, b) for a, b in pairs), "test")


def chain_tasks():
    """inner = the built-in antonyms; outer sends each antonym to a French word (any word will do here)."""
    inner = hs.load_task("builtin/antonym")
    french = [p.output for p in hs.load_task("builtin/english-french").pairs]
    outer = _task("outer", [(p.output, french[i % len(french)]) for i, p in enumerate(inner.pairs)])
    return outer, inner


def test_chains_go_through_an_intermediate_word_case_insensitively():
    inner = _task("antonym", [("hot", "Cold"), ("big", "small"), ("up", "down"), ("old", "new")])
    outer = _task("english-french", [("cold", "froid"), ("small", "petit"), ("small", "minuscule"), ("new", "neuf")])
    composed = compose_tasks(outer, inner, min_pairs=3)
    assert composed.name == "english-french∘antonym"
    assert [(p.input, p.output) for p in composed.task.pairs] == [("hot", "froid"), ("big", "petit"), ("old", "neuf")]
    assert [c.middle for c in composed.chains] == ["Cold", "small", "new"]  # "up" → "down" has no French
    with pytest.raises(TaskError, match="has 3 chained pairs .* at least 4"):
        compose_tasks(outer, inner, min_pairs=4)


def test_single_task_training_pairs_never_touch_a_held_out_chain():
    outer, inner = chain_tasks()
    composed = compose_tasks(outer, inner)
    _train, test = hs.split_task(composed.task, n_train=4, seed=0, max_test=20)
    inner_train, outer_train = single_task_train(composed, test, n_train=4, seed=0)
    held_inputs = {p.input for p in test}
    held_middles = {c.middle.casefold() for c in composed.chains if c.input in held_inputs}
    assert len(inner_train) == len(outer_train) == 4
    assert not held_inputs & {p.input for p in inner_train}
    assert not held_middles & {p.input.casefold() for p in outer_train}
    _, everything = hs.split_task(composed.task, n_train=4, seed=0)
    with pytest.raises(TaskError, match="not used by a held-out chain"):
        single_task_train(composed, everything, n_train=4, seed=0)


def test_the_sum_is_the_two_single_deltas_and_every_method_gives_rows(gemma_tiny, tmp_path, monkeypatch):
    composed = compose_tasks(*chain_tasks())
    seen, batches = {}, []
    real_add, real_fit_many = METHOD_RUNS["Ours (Add)"], composition.fit_many

    def spy_add(cell):
        d = cell.deltas
        seen[cell.seed] = (d.outer.delta + d.inner.delta, (d.outer + d.inner).delta, d)
        return real_add(cell)

    monkeypatch.setitem(composition.METHOD_RUNS, "Ours (Add)", spy_add)
    monkeypatch.setattr(composition, "fit_many", lambda *a, **k: batches.append(1) or real_fit_many(*a, **k))
    rows = build_compose_table(gemma_tiny, [composed], QA, [0, 1], SMALL, tmp_path / "c.csv", progress=False)
    assert len(rows) == 2 * len(COMPOSE_METHODS) and set(rows["method"]) == set(COMPOSE_METHODS)
    assert rows["n_test"].eq(5).all() and rows["n_train"].eq(4).all()
    assert len(batches) == 2  # one batch of three Δ's per cell, shared by its four Δ methods
    for expected, added, deltas in seen.values():
        assert torch.equal(expected, added)
        fitted = (deltas.inner, deltas.outer, deltas.reoptimized)
        assert [d.task for d in fitted] == ["builtin/antonym", "outer", composed.name]
        assert {d.layer for d in fitted} == {SMALL.layer}
    seen.clear()
    again = build_compose_table(gemma_tiny, [composed], QA, [0, 1], SMALL, tmp_path / "c.csv", progress=False)
    assert not seen  # resumed: nothing re-run
    pd.testing.assert_frame_equal(rows, again, check_dtype=False)


def test_the_light_method_names_and_the_composition_runs_agree():
    assert tuple(METHOD_RUNS) == COMPOSE_METHODS


def test_compose_table_refuses_a_composed_task_too_small_for_the_split(gemma_tiny):
    composed = compose_tasks(*chain_tasks())
    with pytest.raises(TaskError, match="needs 70"):
        build_compose_table(gemma_tiny, [composed], QA, [0], ComposeConfig(n_train=60), progress=False)


def test_cli_compose_writes_the_table(tmp_path, capsys):
    outer, inner = chain_tasks()
    data = tmp_path / "data"
    data.mkdir()
    for task in (outer, inner):
        pd.DataFrame([{"input": p.input, "output": p.output} for p in task.pairs]).to_json(
            data / f"{task.name.split('/')[-1]}.json", orient="records", force_ascii=False
        )
    model = save_tiny_model("gemma3", tmp_path / "model")
    out = tmp_path / "compose.csv"
    code = main(
        [
            "compose",
            "--model",
            str(model),
            "--data-dir",
            str(data),
            "--compose",
            "outer",
            "antonym",
            "--seeds",
            "1",
            "--n-train",
            "4",
            "--max-test",
            "3",
            "--layer",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "outer∘antonym: 60 chained pairs" in printed and "Ours (Re-optimized)" in printed
    assert len(pd.read_csv(out)) == len(COMPOSE_METHODS) and out.with_suffix(".md").is_file()


def test_compose_settings_hold_both_tasks_data_and_refuse_another_outer(gemma_tiny, tmp_path):
    outer, inner = chain_tasks()
    settings = compose_settings(gemma_tiny, [compose_tasks(outer, inner)], QA, SMALL)
    assert {n: i.sha256 for n, i in settings.inputs.items()} == {outer.name: outer.sha256, inner.name: inner.sha256}
    out = tmp_path / "c.csv"
    build_compose_table(gemma_tiny, [compose_tasks(outer, inner)], QA, [], SMALL, out, progress=False)
    other = _task(outer.name, [(p.input, p.output + "x") for p in outer.pairs])
    with pytest.raises(ResultsFileError, match="task data for 'outer' differs"):
        build_compose_table(gemma_tiny, [compose_tasks(other, inner)], QA, [0], SMALL, out, progress=False)
