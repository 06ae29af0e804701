"""Evaluation tables: per-example scores, summaries, mean ± std across seeds."""

import pandas as pd
import pytest

import headsteer as hs
from headsteer.evaluate import format_mean_std, normalize
from headsteer.generation import cut_at_stop
from tests.test_hooks import make_iv

QA = hs.get_template("qa")


def test_evaluate_pairs_scores_each_pair(gemma_kinds):
    pairs = [hs.Pair("hot", "cold"), hs.Pair("big", "small")]
    scores = hs.evaluate_pairs(gemma_kinds, pairs, QA, progress=False)
    assert list(scores.columns) == ["input", "target", "prediction", "first_token", "exact_match"]
    assert scores["input"].tolist() == ["hot", "big"]
    assert scores["exact_match"].tolist() == [
        normalize(p) == normalize(t) for p, t in zip(scores.prediction, scores.target)
    ]
    summary = hs.summarize(scores)
    assert summary["n"] == 2 and 0 <= summary["first_token"] <= 1


def test_scores_without_whole_predictions_are_the_same(gemma_kinds):
    """Stopping wrong answers early changes no score; right answers keep their whole text."""
    iv = make_iv(gemma_kinds, scale=3.0)
    inputs = ["hot", "big", "up", "fast"]
    whole = hs.evaluate_pairs(gemma_kinds, [hs.Pair(x, "cold") for x in inputs], QA, [iv], progress=False)
    # Half the targets are what the model says, so both exact-match outcomes occur.
    pairs = [hs.Pair(x, p if i % 2 else "cold") for i, (x, p) in enumerate(zip(inputs, whole["prediction"]))]
    whole = hs.evaluate_pairs(gemma_kinds, pairs, QA, [iv], progress=False)
    short = hs.evaluate_pairs(gemma_kinds, pairs, QA, [iv], progress=False, whole_predictions=False)
    metrics = ["first_token", "exact_match"]
    assert short[metrics].equals(whole[metrics]) and whole["exact_match"].any() and not whole["exact_match"].all()
    right = whole["exact_match"]
    assert short["prediction"][right].equals(whole["prediction"][right])


def test_first_token_hit_when_the_model_is_forced_to_the_answer(gemma_kinds):
    """Plant the answer: a Δ fitted hard on one pair must score it right."""
    pair = hs.Pair("hot", "cold")
    result = hs.fit(gemma_kinds, [pair], QA, hs.FitConfig(layer=2, steps=40, lr=2.0, gamma=0, lam=0), progress=False)
    scores = hs.evaluate_pairs(gemma_kinds, [pair], QA, [result.intervention], progress=False)
    assert scores["first_token"].all()


def test_normalisation_and_stop():
    assert normalize("  Bonjour ") == normalize("bonjour")
    assert normalize("école") != normalize("ecole")
    assert cut_at_stop(" cold\nQ: next", "\n") == "cold"
    assert cut_at_stop("\ncold\n", "\n") == "cold"
    assert cut_at_stop(" cold", None) == " cold"


def test_mean_std_across_seeds():
    runs = pd.DataFrame(
        {
            "method": ["a", "a", "a", "b"],
            "seed": [0, 1, 2, 0],
            "first_token": [0.1, 0.2, 0.3, 0.5],
            "exact_match": [0.0, 0.0, 0.3, 1.0],
        }
    )
    table = hs.mean_std(runs, by=["method"])
    row = table.set_index("method").loc["a"]
    assert row["first_token_mean"] == pytest.approx(0.2) and row["first_token_std"] == pytest.approx(0.1)
    assert row["seeds"] == 3 and table.set_index("method").loc["b", "first_token_std"] == 0.0
    assert format_mean_std(table).set_index("method").loc["a", "first_token"] == "0.200 ± 0.100"


def test_row_deltas_score_like_separate_interventions(gemma_kinds):
    import torch

    from tests.test_hooks import make_iv

    pairs = [hs.Pair("hot", "cold"), hs.Pair("big", "small"), hs.Pair("up", "down")]
    a = make_iv(gemma_kinds, scale=3.0, seed=1)
    b = hs.Intervention(make_iv(gemma_kinds, scale=3.0, seed=2).delta, 2, a.model)
    rows = hs.RowDeltas(torch.tensor([1] * 3 + [2] * 3), torch.stack([a.delta] * 3 + [b.delta] * 3))
    together = hs.evaluate_pairs(gemma_kinds, pairs * 2, QA, rows, batch_size=4, progress=False)
    separate = pd.concat([hs.evaluate_pairs(gemma_kinds, pairs, QA, [iv], progress=False) for iv in (a, b)])
    pd.testing.assert_frame_equal(together, separate.reset_index(drop=True))
    assert (
        together["prediction"].tolist()
        != hs.evaluate_pairs(gemma_kinds, pairs * 2, QA, progress=False)["prediction"].tolist()
    )


def test_run_on_counts_answers_that_start_right_but_are_not_the_target():
    from headsteer.evaluate import run_on

    scores = pd.DataFrame(
        {
            "prediction": ["cold", "cold is the opposite", "warm", "colder", ""],
            "first_token": [True, True, False, True, False],
            "exact_match": [True, False, False, False, False],
        }
    )
    assert run_on(scores).tolist() == [False, True, False, True, False]
    assert hs.summarize(scores)["run_on"] == pytest.approx(2 / 5)
