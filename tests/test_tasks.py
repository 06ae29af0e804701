"""Task loading and splitting, and clear errors on bad data."""

import json

import pytest

import headsteer as hs
from headsteer.prompts import encode_targets
from headsteer.tasks import TODD_TASKS, builtin_task_names, default_data_dir


def test_builtin_tasks_load_offline():
    assert {"builtin/antonym", "builtin/english-french"} <= set(builtin_task_names())
    task = hs.load_task("builtin/antonym")
    assert len(task) >= 30 and hs.Pair("hot", "cold") in task.pairs


def test_split_is_seeded_and_disjoint():
    task = hs.load_task("builtin/english-french")
    train, test = hs.split_task(task, n_train=10, seed=3, max_test=20)
    again, _ = hs.split_task(task, n_train=10, seed=3)
    other, _ = hs.split_task(task, n_train=10, seed=4)
    assert train == again and train != other
    assert len(train) == 10 and len(test) == 20
    assert not {p.input for p in train} & {p.input for p in test}


def test_task_from_a_file_and_from_a_data_dir(tmp_path, monkeypatch):
    (tmp_path / "colours.json").write_text(json.dumps([{"input": "red", "output": "rouge"}] * 3))
    assert len(hs.load_task(str(tmp_path / "colours.json"))) == 3
    assert hs.load_task("colours", data_dir=tmp_path).name == "colours"
    monkeypatch.setenv("HEADSTEER_DATA_DIR", str(tmp_path))
    assert hs.load_task("colours").source == str(tmp_path / "colours.json")


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "is empty"),
        ("{not json", "is not valid JSON"),
        ('{"input": "a"}', "must be a JSON list"),
        ('[{"input": "a"}]', "entry 0: expected string 'input' and 'output'"),
        ('[{"input": "a", "output": 3}]', "entry 0"),
        ('[{"input": " ", "output": "b"}]', "empty input or output"),
    ],
)
def test_bad_task_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(hs.TaskError, match=message):
        hs.load_task(str(path))


def test_unknown_task_names_say_where_they_looked(tmp_path):
    with pytest.raises(hs.TaskError, match=r"unknown task 'antonyms'.*built-in"):
        hs.load_task("antonyms", data_dir=tmp_path)
    with pytest.raises(hs.TaskError, match="unknown built-in task 'builtin/nope'"):
        hs.load_task("builtin/nope")


def test_too_few_pairs_for_the_split():
    task = hs.Task("tiny", (hs.Pair("a", "b"),) * 5, "memory")
    with pytest.raises(hs.TaskError, match="too few for n_train=10"):
        hs.split_task(task, n_train=10)


def test_answer_merging_into_the_prompt_is_refused(gemma_tiny):
    merged = hs.Template("glued", "{input}", "{output}")
    with pytest.raises(hs.TemplateTokenizationError, match="not a strict prefix"):
        encode_targets(gemma_tiny.tokenizer, merged, [hs.Pair("hot", "ter")])


def test_template_needs_its_fields():
    with pytest.raises(ValueError, match="must contain '{input}'"):
        hs.Template("bad", "no input here", "{output}")
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        hs.get_template("nope")


@pytest.mark.skipif(default_data_dir() is None, reason="function_vectors data directory not present")
@pytest.mark.parametrize("name", TODD_TASKS)
def test_function_vector_tasks_load(name):
    task = hs.load_task(name)
    assert len(task) > 100 and all(p.input and p.output for p in task.pairs)
