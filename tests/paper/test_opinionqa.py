"""Reading OpinionQA: group targets drop "Refused" and normalise; bad data and unknown groups say what is wrong."""

import json

import pytest

from headsteer.paper.opinionqa import OpinionQAError, list_groups, load_group, resolve_group, split_questions
from tests.paper.opinion_data import write_opinion_dir


@pytest.fixture
def data(tmp_path):
    return write_opinion_dir(tmp_path / "opinionqa")


def _counts(data, wave, attribute):
    return json.loads((data / f"American_Trends_Panel_W{wave}" / f"{attribute}_data.json").read_text())


def test_a_group_target_is_its_counts_without_refused_normalised(data):
    group = load_group("Northeast", data)
    assert (group.name, group.attribute, len(group)) == ("Northeast", "CREGION", 16)
    question = group.questions[0]
    counts = _counts(data, 1, "CREGION")[question.key]["Northeast"]
    kept = [o for o in counts if o != "Refused"]
    assert question.options == tuple(kept)
    total = sum(counts[o] for o in kept)
    assert question.target == pytest.approx([counts[o] / total for o in kept])


def test_option_text_matches_case_insensitively_and_unknown_options_are_named(data):
    path = data / "American_Trends_Panel_W1" / "CREGION_data.json"
    entries = json.loads(path.read_text())
    entry = entries["Q0_W1"]["Northeast"]
    first = next(iter(entry))
    entry[first.upper()] = entry.pop(first)
    path.write_text(json.dumps(entries))
    assert load_group("Northeast", data).questions[0].target[0] > 0
    entry["no such option"] = 3.0
    path.write_text(json.dumps(entries))
    with pytest.raises(OpinionQAError, match="'no such option', which info.csv does not list"):
        load_group("Northeast", data)


def test_a_question_the_group_did_not_answer_is_skipped(data):
    path = data / "American_Trends_Panel_W2" / "CREGION_data.json"
    entries = json.loads(path.read_text())
    entries["Q0_W2"]["Northeast"] = {"Refused": 4.0}
    del entries["Q1_W2"]["Northeast"]
    path.write_text(json.dumps(entries))
    assert len(load_group("Northeast", data)) == 14


def test_groups_are_found_by_name_and_ambiguous_or_unknown_ones_are_refused(data):
    assert list_groups(data)["INCOME"] == ["$100,000 or more", "Refused"]
    assert resolve_group("Moderate", data) == ("POLIDEOLOGY", "Moderate")
    assert resolve_group("INCOME:Refused", data) == ("INCOME", "Refused")
    with pytest.raises(OpinionQAError, match=r"'Refused' is in \['INCOME', 'POLIDEOLOGY'\]; name one"):
        resolve_group("Refused", data)
    with pytest.raises(OpinionQAError, match="unknown OpinionQA group 'Martians'.*Northeast"):
        resolve_group("Martians", data)


def test_missing_or_malformed_data_is_reported(tmp_path, data):
    with pytest.raises(OpinionQAError, match="no OpinionQA directory"):
        load_group("Northeast", tmp_path / "nowhere")
    (data / "American_Trends_Panel_W1" / "CREGION_data.json").write_text("{not json")
    with pytest.raises(OpinionQAError, match="CREGION_data.json is not valid JSON"):
        load_group("Northeast", data)


def test_splits_are_seeded_and_disjoint(data):
    group = load_group("Northeast", data)
    train, test = split_questions(group, n_train=10, seed=3, max_test=4)
    assert (len(train), len(test)) == (10, 4)
    assert not {q.key for q in train} & {q.key for q in test}
    assert split_questions(group, 10, 3, 4) == (train, test)
    with pytest.raises(OpinionQAError, match="16 questions: too few for n_train=16"):
        split_questions(group, n_train=16)
