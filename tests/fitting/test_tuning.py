"""Cross-validated penalty strength: folds partition the training pairs, nothing held out is fitted on."""

import pandas as pd
import pytest
import torch

import headsteer as hs
import headsteer.fitting.tuning as tuning
from headsteer.fitting.forward import naive_scored_logits
from headsteer.fitting.losses import first_token_nll
from headsteer.prompts import encode_targets

QA = hs.get_template("qa")
TRAIN, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=10, seed=0)
BASE = hs.FitConfig(layer=1, steps=4, lr=0.5)


def test_folds_partition_the_pairs_evenly():
    parts = tuning.folds(TRAIN[:7], 3, seed=1)
    assert sorted(len(p) for p in parts) == [2, 2, 3]
    assert sorted(p.input for part in parts for p in part) == sorted(p.input for p in TRAIN[:7])
    assert parts != tuning.folds(TRAIN[:7], 3, seed=2)
    for k in (1, 8):
        with pytest.raises(ValueError, match="2 <= k <= 7"):
            tuning.folds(TRAIN[:7], k, seed=0)


def test_best_strength_weights_folds_by_size_and_breaks_ties_upwards():
    cv = pd.DataFrame(
        {
            "strength": [0.0, 0.0, 0.1, 0.1],
            "fold": [0, 1, 0, 1],
            "n_heldout": [3, 1, 3, 1],
            "heldout_loss": [1.0, 0.0, 0.5, 2.0],
        }
    )
    assert tuning.best_strength(cv) == 0.0  # 0.75 vs 0.875; an unweighted mean of folds would pick 0.1 (0.5 vs 1.25)
    tie = cv.assign(heldout_loss=1.0)
    assert tuning.best_strength(tie) == 0.1


def test_cross_validation_never_fits_on_the_fold_it_scores(gemma_tiny, monkeypatch):
    seen = []
    real = tuning.fit_many

    def recording(model, jobs, template, **kwargs):
        seen.extend(jobs)
        return real(model, jobs, template, **kwargs)

    monkeypatch.setattr(tuning, "fit_many", recording)
    cv = tuning.cross_validate(gemma_tiny, TRAIN, QA, BASE, grid=(0.0, 0.05), k=5, progress=False)
    assert list(cv["strength"]) == [0.0] * 5 + [0.05] * 5 and cv["n_heldout"].eq(2).all()
    assert torch.isfinite(torch.tensor(cv["heldout_loss"].to_numpy())).all()
    parts = tuning.folds(TRAIN, 5, BASE.seed)
    for job, (s, j) in zip(seen, zip(cv["strength"], cv["fold"])):
        assert {p.input for p in job.pairs}.isdisjoint(p.input for p in parts[j])
        assert len(job.pairs) == 8 and job.config.gamma == job.config.lam == s


def test_heldout_loss_is_the_task_loss_under_a_full_forward(gemma_tiny):
    result = hs.fit(gemma_tiny, TRAIN[:6], QA, BASE, progress=False)
    tokens, targets = encode_targets(gemma_tiny.tokenizer, QA, TRAIN[6:])
    with torch.no_grad():
        scored = naive_scored_logits(gemma_tiny, 1, tokens, result.intervention.delta, 1)
        expected = first_token_nll(scored, targets.target_ids).mean()
    assert tuning.heldout_loss(gemma_tiny, result, TRAIN[6:], QA) == pytest.approx(float(expected), rel=1e-5)


def test_fit_tuned_refits_on_every_pair_at_the_chosen_strength(gemma_tiny):
    result, cv = tuning.fit_tuned(gemma_tiny, TRAIN, QA, BASE, grid=(0.0, 0.02, 5.0), k=2, progress=False)
    chosen = tuning.best_strength(cv)
    assert result.config.gamma == result.config.lam == chosen and len(cv) == 6
    alone = hs.fit(
        gemma_tiny, TRAIN, QA, hs.FitConfig(**{**BASE.to_dict(), "gamma": chosen, "lam": chosen}), progress=False
    )
    torch.testing.assert_close(result.intervention.delta, alone.intervention.delta)
