"""k-shot prompts: the exact text, brace safety, and scoring through the usual evaluator."""

import headsteer as hs
from headsteer.baselines.prompting import few_shot_template

QA = hs.get_template("qa")


def test_few_shot_prompt_text_is_demos_then_query():
    demos = [hs.Pair("hot", "cold"), hs.Pair("big", "small")]
    shot = few_shot_template(QA, demos)
    assert shot.format_prompt("up") == "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: up\nA:"
    assert shot.format_answer("down") == " down" and shot.stop == QA.stop
    assert shot.name == "qa+2shot"
    assert few_shot_template(QA, []) is QA


def test_braces_in_demonstrations_survive_formatting():
    shot = few_shot_template(hs.get_template("colon"), [hs.Pair("{x}", "}y{")])
    assert shot.format_prompt("a") == "{x}:}y{\n\na:"


def test_few_shot_prompts_score_with_the_evaluator(gemma_tiny):
    train = [hs.Pair("hot", "cold"), hs.Pair("big", "small")]
    scores = hs.evaluate_pairs(gemma_tiny, [hs.Pair("up", "down")], few_shot_template(QA, train), progress=False)
    assert list(scores["input"]) == ["up"] and scores["exact_match"].dtype == bool
