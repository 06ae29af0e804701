"""Choosing Δ's loss by cross-validated answers on the training pairs only."""

import pandas as pd
import pytest

import headsteer as hs
from headsteer import loss_choice
from headsteer.errors import ConfigError
from headsteer.loss_choice import chosen_loss, cross_validate_losses, fit_with_chosen_loss

QA = hs.get_template("qa")


def cv_rows(exact: dict[str, list[bool]], first: dict[str, list[bool]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"loss": loss, "exact_match": e, "first_token": f} for loss in exact for e, f in zip(exact[loss], first[loss])]
    )


def test_the_chosen_loss_has_the_most_whole_answers_then_the_most_first_tokens_then_the_papers():
    assert (
        chosen_loss(cv_rows({"first_token": [1, 0], "sequence": [1, 1]}, {"first_token": [1, 1], "sequence": [1, 1]}))
        == "sequence"
    )
    assert (
        chosen_loss(cv_rows({"first_token": [1, 0], "sequence": [1, 0]}, {"first_token": [1, 1], "sequence": [1, 0]}))
        == "first_token"
    )
    assert (
        chosen_loss(cv_rows({"first_token": [0, 0], "sequence": [0, 0]}, {"first_token": [1, 0], "sequence": [0, 1]}))
        == "first_token"
    )


def test_each_training_pair_is_answered_once_per_loss_by_a_delta_that_never_saw_it(gemma_tiny, monkeypatch):
    task = hs.load_task("builtin/antonym")
    train, test = hs.split_task(task, n_train=10, seed=0)
    fitted_on = []
    original = loss_choice.fit_many

    def spy(model, jobs, template, **kwargs):
        fitted_on.extend({p.input for p in job.pairs} for job in jobs)
        return original(model, jobs, template, **kwargs)

    monkeypatch.setattr(loss_choice, "fit_many", spy)
    config = hs.FitConfig(layer=1, steps=2)
    cv = cross_validate_losses(gemma_tiny, train, QA, config, k=5)
    assert list(cv.columns) == ["loss", "fold", "input", "target", "prediction", "first_token", "exact_match"]
    assert len(cv) == 2 * len(train) and sorted(cv["input"].unique()) == sorted(p.input for p in train)
    assert not {p.input for p in test} & set(cv["input"]), "no test pair is read"
    assert len(fitted_on) == 2 * 5
    folds = cv[cv["loss"] == "sequence"].groupby("fold")["input"].apply(set).tolist()
    for held, seen in zip(folds, fitted_on[5:]):
        assert not held & seen and len(held | seen) == len(train), "each fold's Δ is fitted on the other folds"
    result, again = fit_with_chosen_loss(gemma_tiny, train, QA, config, k=5)
    assert result.config.loss == chosen_loss(cv) and again.equals(cv)
    with pytest.raises(ConfigError, match="losses to compare"):
        cross_validate_losses(gemma_tiny, train, QA, config, losses=("option_kl",))
