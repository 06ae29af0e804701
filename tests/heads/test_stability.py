"""Stability selection over a path table, FV agreement and set overlaps, on hand-made tables."""

import math

import pandas as pd
import pytest

from headsteer.heads.stability import (
    fv_agreement,
    jaccard,
    marked_heads,
    selection_frequencies,
    set_overlap,
    stability_selection,
)

STRENGTHS = (0.4, 0.2, 0.1)


def path_table(selected: dict[int, dict[float, set]], heads=((0, 0), (0, 1), (1, 0), (1, 1))) -> pd.DataFrame:
    """One row per (sample, strength, layer, head); norm 1 where ``selected[sample][strength]`` holds the head."""
    return pd.DataFrame(
        [
            {"sample": r, "strength": s, "layer": layer, "head": h, "norm": float((layer, h) in on.get(s, set()))}
            for r, on in selected.items()
            for s in STRENGTHS
            for layer, h in heads
        ]
    )


# Sample 0 is every training pair; samples 1-4 are resamples. Head (0, 0) is on early in every resample,
# (1, 1) in 3 of 4 only at 0.2 and below, (0, 1) in one resample; at 0.1 every head is on everywhere.
ALL = {(0, 0), (0, 1), (1, 0), (1, 1)}
PATH = path_table(
    {
        0: {0.4: {(0, 0)}, 0.2: {(0, 0), (1, 1)}, 0.1: ALL},
        1: {0.4: {(0, 0)}, 0.2: {(0, 0), (1, 1)}, 0.1: ALL},
        2: {0.4: {(0, 0)}, 0.2: {(0, 0), (1, 1)}, 0.1: ALL},
        3: {0.4: {(0, 0), (0, 1)}, 0.2: {(0, 0), (1, 1)}, 0.1: ALL},
        4: {0.4: {(0, 0)}, 0.2: {(0, 0)}, 0.1: ALL},
    }
)


def test_selection_frequencies_count_resamples_only():
    freq = selection_frequencies(PATH).set_index(["strength", "layer", "head"])["frequency"]
    assert freq[(0.4, 0, 0)] == 1.0 and freq[(0.4, 0, 1)] == 0.25 and freq[(0.2, 1, 1)] == 0.75
    assert freq.xs(0.1).eq(1.0).all()


def test_the_region_stops_where_the_resamples_select_more_than_q_max_and_stable_heads_reach_the_threshold():
    # p = 4 heads, threshold 0.75, E_V = 1: q_max = sqrt(0.5 * 4) = 1.41. q(0.4) = 1.25 (1, 1, 2, 1 heads),
    # q(0.2) = 2 (the union 0.4 and 0.2: 2, 2, 3, 1) > q_max: the region is {0.4}; only (0, 0) is stable.
    s = stability_selection(PATH, chosen=0.1, threshold=0.75, expected_false=1.0)
    assert s.q_max == pytest.approx(math.sqrt(2)) and s.region == (0.4,) and s.q == 1.25
    assert s.stable == {(0, 0)} and s.stable_labels() == ["L0.H0"]
    assert s.error_bound == pytest.approx(1.25**2 / (0.5 * 4))
    heads = s.heads.set_index(["layer", "head"])
    assert heads.loc[(0, 1), "frequency_max"] == 0.25 and heads["frequency_chosen"].eq(1.0).all()
    # a looser bound admits 0.2 into the region, and with it head (1, 1) at 0.75
    loose = stability_selection(PATH, chosen=0.1, threshold=0.75, expected_false=2.0)
    assert loose.region == (0.4, 0.2) and loose.stable == {(0, 0), (1, 1)}
    with pytest.raises(ValueError, match="threshold"):
        stability_selection(PATH, chosen=0.1, threshold=0.5)


def test_fv_agreement_compares_each_samples_region_heads_with_the_fv_top_heads():
    fv = pd.DataFrame({"layer": [1, 0, 0, 1], "head": [1, 0, 1, 0], "aie": [0.9, 0.5, 0.1, 0.0]})
    table = fv_agreement(PATH, (0.4,), fv, k=2).set_index("sample")  # FV top 2: (1, 1) and (0, 0)
    assert table.loc[3, ["n_delta", "n_fv", "shared"]].tolist() == [2, 2, 1]
    assert table.loc[3, "jaccard"] == pytest.approx(1 / 3) and table.loc[3, "chance_shared"] == 1.0
    assert table.loc[1, "jaccard"] == 0.5
    per_sample = pd.concat([fv.assign(sample=r) for r in range(5)])
    per_sample.loc[(per_sample["sample"] == 1) & (per_sample["layer"] == 0) & (per_sample["head"] == 0), "aie"] = -1
    assert fv_agreement(PATH, (0.4,), per_sample, k=2).set_index("sample").loc[1, "shared"] == 0


def test_set_overlap_and_marked_heads_keep_a_task_with_no_heads():
    heads = pd.DataFrame(
        {
            "task": ["a", "a", "b", "b", "c"],
            "layer": [0, 1, 0, 2, 0],
            "head": [0, 1, 0, 3, 0],
            "stable": [True, True, True, True, False],
        }
    )
    sets = marked_heads(heads, "stable")
    assert sets == {"a": {(0, 0), (1, 1)}, "b": {(0, 0), (2, 3)}, "c": frozenset()}
    table = set_overlap(sets).set_index(["task_a", "task_b"])
    assert table.loc[("a", "b"), "shared"] == 1 and table.loc[("a", "b"), "jaccard"] == pytest.approx(1 / 3)
    assert table.loc[("c", "c"), "jaccard"] == 1.0 and table.loc[("a", "c"), "jaccard"] == 0.0
    assert jaccard(frozenset(), frozenset()) == 1.0
