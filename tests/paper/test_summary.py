"""The table summary's run-on share: per (task, method, seed), from the saved predictions."""

from __future__ import annotations

import math

import pandas as pd

from headsteer.paper.summary import summary_markdown, with_run_on


def test_run_on_share_is_each_cells_share_of_right_starts_that_are_not_the_target():
    rows = pd.DataFrame(
        {
            "task": ["t", "t", "t"],
            "method": ["a", "b", "c"],
            "seed": [0, 0, 0],
            "exact_match": [0.5, 0.25, 1.0],
            "first_token": [1.0, 0.5, 1.0],
        }
    )
    predictions = pd.DataFrame(
        {
            "task": ["t"] * 6,
            "method": ["a", "a", "b", "b", "b", "b"],
            "seed": [0] * 6,
            # a: one exact, one run-on; b: one run-on, one exact, two wrong from the first token
            "first_token": [True, True, True, True, False, False],
            "exact_match": [True, False, False, True, False, False],
        }
    )
    shares = with_run_on(rows, predictions).set_index("method")["run_on"]
    assert shares["a"] == 0.5
    assert shares["b"] == 0.25
    assert math.isnan(shares["c"])  # no predictions saved for that cell: no value, not zero
    text = summary_markdown(with_run_on(rows, predictions), ["a", "b", "c"], ("exact_match", "first_token", "run_on"))
    assert "Run-on share" in text


def test_a_stale_run_on_column_is_replaced_not_duplicated():
    rows = pd.DataFrame({"task": ["t"], "method": ["a"], "seed": [0], "run_on": [0.9]})
    predictions = pd.DataFrame(
        {"task": ["t"], "method": ["a"], "seed": [0], "first_token": [True], "exact_match": [True]}
    )
    assert with_run_on(rows, predictions)["run_on"].tolist() == [0.0]
