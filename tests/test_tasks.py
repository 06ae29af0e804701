"""Task loading and splitting, and clear errors on bad data."""

import json

import pytest

import headsteer as hs
from headsteer.errors import ConfigError, PromptTooLongError
from headsteer.prompts import encode_targets, token_limit
from headsteer.tasks import TODD_TASKS, Pair, Task, builtin_task_names, default_data_dir, split_task


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
    colours = [("red", "rouge"), ("blue", "bleu"), ("green", "vert")]
    (tmp_path / "colours.json").write_text(json.dumps([{"input": i, "output": o} for i, o in colours]))
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


def test_a_task_file_that_is_not_utf8_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"input": "café", "output": "coffee"}]'.encode("latin-1"))
    offset = len('[{"input": "caf')
    with pytest.raises(hs.TaskError, match=rf"{path}\) is not UTF-8 text: byte 0xe9 at offset {offset} "):
        hs.load_task(str(path))


def test_a_missing_task_file_is_named_as_a_file(tmp_path):
    with pytest.raises(hs.TaskError, match=rf"task file {tmp_path / 'nope.json'} does not exist"):
        hs.load_task(str(tmp_path / "nope.json"))


def test_repeated_inputs_are_dropped_at_load_keeping_the_first(tmp_path):
    rows = [("hot", "cold"), ("big", "small"), ("hot", "icy"), ("up", "down"), ("big", "little")]
    path = tmp_path / "dups.json"
    path.write_text(json.dumps([{"input": i, "output": o} for i, o in rows]))
    task = hs.load_task(str(path))
    assert task.pairs == (hs.Pair("hot", "cold"), hs.Pair("big", "small"), hs.Pair("up", "down"))
    assert task.dropped_duplicates == 2


@pytest.mark.parametrize(
    "n_train, max_test, message",
    [
        (0, None, "n_train must be an int >= 1, got 0"),
        (2, -1, "max_test must be None .* got -1"),
        (2, 0, "max_test must be None .* got 0"),
    ],
)
def test_split_sizes_are_validated(n_train, max_test, message):
    with pytest.raises(ConfigError, match=message):
        hs.split_task(hs.load_task("builtin/antonym"), n_train=n_train, max_test=max_test)


def test_a_split_with_no_test_pair_left_names_the_task():
    task = hs.Task("echo", (hs.Pair("a", "b"), hs.Pair("a", "c"), hs.Pair("a", "d")), "memory")  # built, not loaded
    with pytest.raises(hs.TaskError, match="task 'echo': no test pair is left with seed 0"):
        hs.split_task(task, n_train=2, seed=0)


LONG = hs.Pair(" ".join(["hot"] * 300), "cold")


def test_a_pair_over_the_token_limit_is_refused_by_name_and_count(gemma_tiny):
    qa = hs.get_template("qa")
    with pytest.raises(
        PromptTooLongError,
        match=r"pair 'hot hot .*…' → 'cold' is 306 tokens long "
        r"\(prompt \+ answer, template 'qa'\), more than the limit "
        r"of 256; .*--max-tokens",
    ):
        encode_targets(gemma_tiny.tokenizer, qa, [hs.Pair("hot", "cold"), LONG])
    with pytest.raises(PromptTooLongError, match=r"the prompt of input 'hot hot .*' is 305 tokens long"):
        hs.encode_prompts(gemma_tiny.tokenizer, qa, [LONG.input])


def test_the_token_limit_is_configurable(gemma_tiny):
    qa = hs.get_template("qa")
    with token_limit(400):
        tokens, _ = encode_targets(gemma_tiny.tokenizer, qa, [LONG])
        assert tokens.input_ids.shape == (1, 306)
    with token_limit(None):
        encode_targets(gemma_tiny.tokenizer, qa, [LONG])
    with token_limit(5), pytest.raises(PromptTooLongError, match="'hot' → 'cold' is 7 tokens long .* limit of 5"):
        encode_targets(gemma_tiny.tokenizer, qa, [hs.Pair("hot", "cold")])
    with pytest.raises(ConfigError, match="token limit must be None or an int >= 1"), token_limit(0):
        pass


def test_split_task_takes_a_list_of_pairs_like_a_task():
    pairs = [Pair(f"w{i}", f"v{i}") for i in range(12)] + [Pair("w0", "again")]
    from_list = split_task(pairs, n_train=4, seed=3)
    from_task = split_task(Task("t", tuple(pairs[:12]), "s"), n_train=4, seed=3)
    assert from_list == from_task, "the repeated input is dropped, and the split is the same"
