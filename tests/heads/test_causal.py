"""Held-out causal shares: the streaming first-token scores, their agreement with evaluate_pairs, and ablations."""

import pytest
import torch

import headsteer as hs
from headsteer.fitting.unembed import FinalHidden
from headsteer.heads.causal import first_token_scores, head_ablations, heldout_scores
from headsteer.steering import RowDeltas
from tests.heads.planted import DECOY, LAYER, PLANTED, QA, planted_gpt2

TASK = hs.load_task("builtin/antonym")
TRAIN, TEST = hs.split_task(TASK, n_train=8, seed=0, max_test=12)


def test_streaming_scores_equal_the_full_logits():
    g = torch.Generator().manual_seed(0)
    hidden, weight, bias = torch.randn(6, 1, 8, generator=g), torch.randn(9000, 8, generator=g), torch.randn(9000)
    targets = torch.tensor([0, 5, 8999, 4096, 4095, 17])
    logits = hidden[:, 0] @ weight.T + bias
    targets[1] = int(logits[1].argmax())  # one row scores a hit
    nll, hit = first_token_scores(FinalHidden(hidden, weight, bias), targets)
    torch.testing.assert_close(nll, -torch.log_softmax(logits, -1)[torch.arange(6), targets], rtol=1e-5, atol=1e-5)
    assert hit.tolist() == (logits.argmax(-1) == targets).tolist() and hit[1]


def test_heldout_accuracy_is_evaluate_pairs_first_token_accuracy(any_model):
    """Each variant's accuracy is what ``evaluate_pairs`` (greedy generation) says, per layer and Δ.

    The targets are the unsteered model's own greedy words, so no Δ scores 1 and a Δ that moves them less.
    """
    candidates = list(TASK.pairs)
    greedy = hs.evaluate_pairs(any_model, candidates, QA, (), max_new_tokens=1, progress=False)["prediction"]
    pairs = [hs.Pair(p.input, word.strip()) for p, word in zip(candidates, greedy) if word.strip()][:20]
    n_heads, d_head = any_model.cfg.n_heads, any_model.cfg.d_head
    deltas = torch.randn(3, n_heads, d_head, generator=torch.Generator().manual_seed(2)) * 3
    deltas[0] = 0
    layers = torch.tensor([0, 1, 2])
    scores = heldout_scores(any_model, pairs, QA, RowDeltas(layers, deltas), max_rows=7)  # prompts over passes
    assert len(pairs) >= 4 and scores.loc[0, "accuracy"] == 1.0 and scores["accuracy"].min() < 1.0
    for v in range(3):
        rows = RowDeltas(layers[v].repeat(len(pairs)), deltas[v].expand(len(pairs), -1, -1))
        expected = hs.evaluate_pairs(any_model, pairs, QA, rows, max_new_tokens=1, progress=False)
        assert scores.loc[v, "accuracy"] == pytest.approx(expected["first_token"].mean())
    assert scores["loss"].nunique() == 3


def test_ablations_of_a_planted_and_a_decoy_head():
    """Δ on the planted and the decoy head: the decoy's removal changes nothing, the planted head alone is all of Δ."""
    model = planted_gpt2(TRAIN)
    delta = torch.zeros(model.cfg.n_heads, model.cfg.d_head)
    delta[PLANTED], delta[DECOY] = torch.randn(model.cfg.d_head), 5 * torch.randn(model.cfg.d_head)
    iv = hs.Intervention(delta, LAYER, hs.ModelSignature.of(model), "antonym")
    per_layer, per_head = head_ablations(model, TEST, QA, [iv])
    full = per_layer.iloc[0]
    heads = per_head.set_index("head")
    assert heads.loc[DECOY, "loss_without"] == pytest.approx(full["loss"], abs=1e-5)
    assert heads.loc[DECOY, "loss_alone"] == pytest.approx(full["loss_zero_shot"], abs=1e-5)
    assert heads.loc[PLANTED, "loss_alone"] == pytest.approx(full["loss"], abs=1e-5)
    assert heads.loc[PLANTED, "loss_without"] == pytest.approx(full["loss_zero_shot"], abs=1e-5)
    inactive = next(h for h in range(model.cfg.n_heads) if h not in (PLANTED, DECOY))  # Δ_h = 0: not run
    assert heads.loc[inactive, ["loss_without", "loss_alone"]].tolist() == [full["loss"], full["loss_zero_shot"]]
    if full["loss"] < full["loss_zero_shot"]:
        assert heads.loc[PLANTED, "sufficiency"] == pytest.approx(1, abs=1e-4)
        assert heads.loc[DECOY, "necessity"] == pytest.approx(0, abs=1e-4)
    else:
        assert heads[["necessity", "sufficiency"]].isna().all().all()  # no gain to share
