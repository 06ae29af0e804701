"""k-shot prompts: the exact text, brace safety, and scoring through the usual evaluator."""

import headsteer as hs
from headsteer.baselines.prompting import few_shot_template
from headsteer.evaluate import DEFAULT_MAX_NEW_TOKENS

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


def test_the_evaluator_answers_after_the_demonstrations(gemma_kinds):
    """Scored with a k-shot template, each query is answered after the demonstrations' text, not alone."""
    task = hs.load_task("builtin/antonym")
    train, test = hs.split_task(task, n_train=10, seed=0, max_test=8)
    scores = hs.evaluate_pairs(gemma_kinds, test, few_shot_template(QA, train), progress=False)
    shots = "".join(f"Q: {d.input}\nA: {d.output}\n\n" for d in train)
    by_hand = hs.generate(
        gemma_kinds, [f"{shots}Q: {p.input}\nA:" for p in test], template=None, max_new_tokens=DEFAULT_MAX_NEW_TOKENS
    )
    assert list(scores["prediction"]) == by_hand
    alone = hs.evaluate_pairs(gemma_kinds, test, QA, progress=False)
    assert list(alone["prediction"]) != by_hand  # the shots change this model's answers, so ignoring them shows
