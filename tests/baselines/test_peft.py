"""PEFT baselines: each lowers its training loss, leaves the shared model alone, and scores like the rest."""

import pytest
import torch

import headsteer as hs
from headsteer.baselines.peft import PEFT_METHODS, PEFTConfig, evaluate_hf, train_peft
from tests.helpers import tiny_bridge

QA = hs.get_template("qa")
TRAIN = [hs.Pair(a, b) for a, b in [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow")]]


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_each_method_lowers_its_training_loss_and_leaves_the_model_alone(gemma_tiny, method):
    before = {k: v.clone() for k, v in gemma_tiny.original_model.state_dict().items()}
    trained, history = train_peft(gemma_tiny, TRAIN, QA, PEFTConfig(method=method, steps=25), task="antonym")
    assert len(history) == 26 and history["task_loss"].iloc[-1] < 0.7 * history["task_loss"].iloc[0]
    after = gemma_tiny.original_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    scores = evaluate_hf(trained, gemma_tiny.tokenizer, TRAIN, QA)
    assert list(scores.columns) == ["input", "target", "prediction", "first_token", "exact_match"]
    untrained = evaluate_hf(gemma_tiny.original_model, gemma_tiny.tokenizer, TRAIN, QA)
    assert scores["prediction"].tolist() != untrained["prediction"].tolist()  # the trained copy is what is scored


def test_generation_matches_the_bridge_without_adapters(gemma_tiny):
    """The HF path scores an untrained model exactly as evaluate_pairs scores the bridge."""
    ours = hs.evaluate_pairs(gemma_tiny, TRAIN, QA, progress=False)
    theirs = evaluate_hf(gemma_tiny.original_model, gemma_tiny.tokenizer, TRAIN, QA)
    assert ours.equals(theirs)


def test_config_and_architecture_errors_are_named():
    with pytest.raises(ValueError, match="method must be one of"):
        PEFTConfig(method="adapter")
    assert PEFTConfig(method="ia3").lr == 3e-2
    with pytest.raises(ValueError, match="needs modules"):
        train_peft(tiny_bridge("gpt2"), TRAIN, QA, PEFTConfig(method="lora", steps=1))
