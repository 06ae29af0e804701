"""Opinion steering on a tiny model: prompts, option distributions, the shared-context path, Δ, the table."""

import json
import math

import pandas as pd
import pytest
import torch

import headsteer as hs
from headsteer.cli import main
from headsteer.errors import ConfigError, ResultsFileError
from headsteer.files import predictions_path
from headsteer.fitting.forward import shared_prefix_final_hidden
from headsteer.paper.methods import OPINION_METHODS
from headsteer.paper.opinion import (
    METHOD_RUNS,
    OpinionConfig,
    build_opinion_table,
    few_shot_context,
    fit_opinion,
    modal_letter,
    option_token_ids,
    persona,
    question_block,
    score_questions,
    uniform_scores,
)
from headsteer.paper.opinionqa import OpinionGroup, OpinionQuestion, load_group, split_questions
from headsteer.paper.summary import with_average
from headsteer.prompts import encode_continuations, encode_texts
from tests.helpers import save_tiny_model
from tests.paper.opinion_data import write_opinion_dir

QUESTION = OpinionQuestion("K", "hot or cold", ("hot", "cold", "big"), (0.2, 0.5, 0.3))


@pytest.fixture
def group(tmp_path):
    return load_group("Northeast", write_opinion_dir(tmp_path / "opinionqa"))


def test_prompts_letter_the_options_and_shots_show_the_modal_answer(group):
    assert question_block(QUESTION) == "Question: hot or cold\nA. hot\nB. cold\nC. big\nAnswer:"
    assert modal_letter(QUESTION) == "B"
    prompt = few_shot_context(group, group.questions[:2]) + question_block(QUESTION)
    blocks = prompt.split("\n\n")
    assert blocks[0] == "Answer as a person who lives in the Northeast of the United States."
    assert blocks[1].endswith(f"Answer: {modal_letter(group.questions[0])}") and blocks[-1] == question_block(QUESTION)


def test_option_letters_must_be_single_tokens():
    class SplitsLetters:
        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ValueError, match="option letter 'A' is 2 tokens"):
        option_token_ids(SplitsLetters(), 3)


def test_option_distribution_is_the_softmax_over_the_letters_and_kl_is_to_the_target(gemma_kinds):
    scores = score_questions(gemma_kinds, [QUESTION], [question_block(QUESTION)])
    logits = hs.next_token_logits(gemma_kinds, encode_texts(gemma_kinds.tokenizer, [question_block(QUESTION)]))[0]
    q = torch.softmax(logits[option_token_ids(gemma_kinds.tokenizer, 3)].double(), -1)
    p = torch.tensor(QUESTION.target, dtype=torch.float64)
    assert json.loads(scores["prediction"][0]) == pytest.approx(q.tolist(), abs=1e-5)
    assert scores["kl"][0] == pytest.approx(float((p * (p / q).log()).sum()), abs=1e-5)
    smoothed = 0.99 * p + 0.01 / 3  # the paper's direction, KL(q ‖ p̃), with the group smoothed by 1% uniform
    assert scores["kl_reverse"][0] == pytest.approx(float((q * (q / smoothed).log()).sum()), abs=1e-5)
    uniform = uniform_scores([QUESTION])
    assert uniform["kl"][0] == pytest.approx(math.log(3) + sum(x * math.log(x) for x in QUESTION.target))
    assert uniform["kl_reverse"][0] == pytest.approx(float((smoothed.log().neg() - math.log(3)).mean()), abs=1e-9)


def test_the_papers_kl_is_finite_where_the_group_gives_an_option_nothing(gemma_tiny):
    """KL(model ‖ group) with a zero in the group's distribution: finite (smoothed) loss and gradient."""
    question = OpinionQuestion("Z", "Is it hot?", ("yes", "no", "maybe"), (0.7, 0.3, 0.0))
    config = hs.FitConfig(layer=1, loss="option_kl_reverse", steps=3)
    group = OpinionGroup("Northeast", "CREGION", (question,) * 3, "test")
    result = fit_opinion(gemma_tiny, group, [question] * 3, config, progress=False)
    assert torch.isfinite(torch.tensor(result.history["task_loss"].tolist())).all()
    assert float(score_questions(gemma_tiny, [question], [question_block(question)])["kl_reverse"][0]) < 10


def test_a_shared_context_gives_each_prompt_its_own_full_forward(gemma_kinds, group):
    """The tiny Gemma's sliding window (16) is shorter than the context: the cache must still agree."""
    context = few_shot_context(group, group.questions[1:4]) + question_block(group.questions[0]) + "\n\n"
    short = OpinionQuestion("S", "hot", ("up", "down"), (0.5, 0.5))
    prompts = [question_block(q) for q in (QUESTION, short, *group.questions[4:7])]
    shared_ids, suffixes = encode_continuations(gemma_kinds.tokenizer, context, prompts)
    assert len(shared_ids) > 16 and int(suffixes.attention_mask.sum(1).min()) < suffixes.input_ids.shape[1]
    logits = shared_prefix_final_hidden(gemma_kinds, shared_ids, suffixes).logits()[:, 0]
    for row, prompt in enumerate(prompts):  # one prompt at a time: no padding anywhere
        alone = hs.next_token_logits(gemma_kinds, encode_texts(gemma_kinds.tokenizer, [context + prompt]))[0]
        torch.testing.assert_close(logits[row], alone, atol=1e-4, rtol=1e-4)


def test_an_intervention_cannot_be_combined_with_a_shared_context(gemma_tiny, group):
    result = fit_opinion(gemma_tiny, group, group.questions[:4], hs.FitConfig(layer=1, loss="option_kl", steps=1))
    with pytest.raises(ValueError, match="shared context cannot be combined"):
        score_questions(gemma_tiny, [QUESTION], [question_block(QUESTION)], result.intervention, context="x\n\n")


def test_fitting_delta_moves_the_training_answers_toward_the_group(gemma_kinds, group):
    train, _ = split_questions(group, n_train=6, seed=0)
    config = hs.FitConfig(layer=1, loss="option_kl", steps=40, lr=0.1, gamma=0.0, lam=0.0)
    result = fit_opinion(gemma_kinds, group, train, config, progress=False)
    before = score_questions(gemma_kinds, train, [question_block(q) for q in train])["kl"].mean()
    after = score_questions(gemma_kinds, train, [question_block(q) for q in train], result.intervention)["kl"].mean()
    assert after < 0.5 * before
    assert (
        result.intervention.task == "opinionqa/CREGION/Northeast"
        and result.intervention.template["kind"] == "opinionqa"
    )


def test_the_table_has_every_method_per_group_and_seed_and_resumes(gemma_tiny, tmp_path, group):
    config = OpinionConfig(n_train=4, max_test=3, layer=1, fit_steps=2)
    out = tmp_path / "o.csv"
    rows = build_opinion_table(gemma_tiny, {"Northeast": group}, [0, 1], config, out, progress=False)
    assert len(rows) == 2 * len(OPINION_METHODS) and rows["n_test"].eq(3).all()
    predictions = pd.read_csv(predictions_path(out))
    assert len(predictions) == 2 * len(OPINION_METHODS) * 3 and set(predictions.columns) >= {
        "key",
        "target",
        "prediction",
        "kl",
        "kl_reverse",
    }
    again = build_opinion_table(gemma_tiny, {"Northeast": group}, [0, 1], config, out, progress=False)
    pd.testing.assert_frame_equal(rows, again, check_dtype=False)
    averaged = with_average(pd.concat([rows, rows.assign(task="South", kl=rows["kl"] + 1)]))
    average = averaged[averaged["task"] == "average"].set_index(["method", "seed"])["kl"]
    assert average.sort_index().tolist() == pytest.approx(
        (rows.set_index(["method", "seed"])["kl"] + 0.5).sort_index().tolist()
    )


def test_each_method_scores_as_its_definition_says(gemma_tiny, tmp_path, group):
    config = OpinionConfig(n_train=4, max_test=3, layer=1, fit_steps=2)
    rows = build_opinion_table(gemma_tiny, {"Northeast": group}, [0], config, tmp_path / "o.csv", progress=False)
    train, test = split_questions(group, n_train=4, seed=0, max_test=3)
    plain = [question_block(q) for q in test]

    def means(intervention=None, context=""):
        return score_questions(gemma_tiny, test, plain, intervention, context)[["kl", "kl_reverse"]].mean()

    def fitted(loss):
        return fit_opinion(gemma_tiny, group, train, hs.FitConfig(layer=1, steps=2, loss=loss), progress=False)

    expected = {
        "uniform": uniform_scores(test)[["kl", "kl_reverse"]].mean(),
        "unsteered": means(),
        "0-shot": means(context=persona(group) + "\n\n"),
        "10-shot": means(context=few_shot_context(group, train)),
        "Δ (ours)": means(fitted("option_kl_reverse").intervention),  # the paper's loss is the reference
        "Δ forward KL": means(fitted("option_kl").intervention),
    }
    for metric in ("kl", "kl_reverse"):
        saved = rows.set_index("method")[metric]
        for method, value in expected.items():
            assert saved[method] == pytest.approx(value[metric], rel=1e-6), (method, metric)
    kls = [round(float(v["kl"]), 6) for v in expected.values()]
    assert len(set(kls)) == len(kls)  # the persona, shots and each loss's Δ each matter


def test_the_light_method_names_and_the_opinion_runs_agree():
    assert tuple(METHOD_RUNS) == OPINION_METHODS


def test_opinion_config_names_the_field_at_fault():
    with pytest.raises(ConfigError, match="OpinionConfig.lr must be a finite number > 0, got 0.0"):
        OpinionConfig(lr=0.0)
    with pytest.raises(ConfigError, match="OpinionConfig.fit_steps must be an int >= 1, got 0"):
        OpinionConfig(fit_steps=0)
    assert OpinionConfig(lr=0.2, gamma=0.0).fit_config(3) == hs.FitConfig(
        layer=4, gamma=0.0, lam=0.01, loss="option_kl_reverse", steps=50, lr=0.2, seed=3
    )
    with pytest.raises(ConfigError, match="OpinionConfig.loss must be one of"):
        OpinionConfig(loss="first_token")


def test_cli_opinion_writes_the_table(tmp_path, capsys):
    data = write_opinion_dir(tmp_path / "opinionqa")
    model = save_tiny_model("gemma3", tmp_path / "model")
    out = tmp_path / "opinion.csv"
    code = main(
        [
            "opinion",
            "--model",
            str(model),
            "--data-dir",
            str(data),
            "--group",
            "Northeast",
            "--group",
            "INCOME:Refused",
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
    assert "INCOME:Refused (INCOME): 16 questions" in printed and "| Δ (ours)" in printed and "average" in printed
    assert set(pd.read_csv(out)["task"]) == {"Northeast", "INCOME:Refused"}
    assert (
        main(["opinion", "--model", str(model), "--data-dir", str(data), "--group", "Refused", "--out", str(out)]) == 2
    )


def test_another_groups_data_under_the_same_name_is_refused(gemma_tiny, tmp_path, group):
    config, out = OpinionConfig(n_train=4, max_test=3, layer=1, fit_steps=2), tmp_path / "o.csv"
    build_opinion_table(gemma_tiny, {"Northeast": group}, [0], config, out, progress=False)
    other = load_group("Northeast", write_opinion_dir(tmp_path / "other", seed=1))
    assert other.sha256 != group.sha256 and load_group("Northeast", group.source).sha256 == group.sha256
    with pytest.raises(ResultsFileError, match="OpinionQA group for 'Northeast' differs"):
        build_opinion_table(gemma_tiny, {"Northeast": other}, [1], config, out, progress=False)
