"""One layer's heads: head tables, the regularization path of independent fits and the top-k overlap with FV heads."""

import math

import pandas as pd
import pytest
import torch

import headsteer as hs
from headsteer.heads import fit_regularization_path, head_overlap, head_table, switch_on

QA = hs.get_template("qa")
SIGNATURE = hs.ModelSignature(name="toy", n_layers=3, n_heads=4, d_head=2, d_model=8)


def iv(rows, layer=1, task="t"):
    return hs.Intervention(torch.tensor(rows, dtype=torch.float32), layer, SIGNATURE, task)


def test_head_table_ranks_norms_and_shares():
    table = head_table([iv([[3, 4], [0, 0], [0, 1], [1, 0]], task="a"), iv([[0, 0]] * 4, layer=2, task="b")])
    a = table[table["task"] == "a"]
    assert a["norm"].tolist() == [5, 0, 1, 1] and a["rank"].tolist() == [1, 4, 2, 3]
    assert a["share"].sum() == pytest.approx(1.0) and a["active"].tolist() == [True, False, True, True]
    assert not table[table["task"] == "b"]["active"].any() and table[table["task"] == "b"]["layer"].eq(2).all()


def test_path_from_strong_to_no_penalty(gemma_kinds):
    train, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=6, seed=0)
    path = fit_regularization_path(
        gemma_kinds, train, QA, hs.FitConfig(layer=1, steps=5, lr=0.5), (1e4, 0.0), "antonym", progress=False
    )
    n_heads = gemma_kinds.cfg.n_heads
    assert len(path) == 2 * n_heads and list(path.columns[:4]) == ["task", "layer", "strength", "head"]
    assert not path[path["strength"] == 1e4]["active"].any()  # everything shrunk to zero
    assert path[path["strength"] == 0.0]["active"].all()
    strong, free = (path[path["strength"] == s]["task_loss"].iloc[0] for s in (1e4, 0.0))
    assert free < strong


def test_switch_on_orders_heads_by_the_strength_they_appear_at():
    path = pd.DataFrame(
        {
            "task": "t",
            "layer": 4,
            "strength": [0.3] * 3 + [0.1] * 3 + [0.0] * 3,
            "head": [0, 1, 2] * 3,
            "active": [False, True, False, True, True, False, True, True, False],
        }
    )
    order = switch_on(path)
    assert order["head"].tolist() == [1, 0, 2] and order["order"].tolist()[:2] == [1.0, 2.0]
    assert order["switch_on_strength"].tolist()[:2] == [0.3, 0.1] and math.isnan(order["order"].iloc[2])


def test_head_overlap_compares_top_heads_at_the_fitted_layers():
    delta = pd.DataFrame({"layer": 4, "head": [0, 1, 2, 3], "norm": [0.1, 2.0, 1.0, 0.0]})
    fv = pd.DataFrame({"layer": [4, 4, 4, 4, 9], "head": [0, 1, 2, 3, 0], "aie": [0.5, 0.2, 0.0, 0.1, 9.0]})
    table, overlap = head_overlap(delta, fv, k=2)
    assert table["delta_head"].tolist() == ["L4.H1", "L4.H2"] and table["fv_head"].tolist() == ["L4.H0", "L4.H1"]
    assert overlap == 0.5 and table["delta_head_in_fv_top"].tolist() == [True, False]
    with pytest.raises(ValueError, match="k=5 but only 4 heads"):
        head_overlap(delta, fv, k=5)
