"""The fitter: recovers a sparse solution, decreases each task loss, is deterministic, fails clearly."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

import headsteer as hs
from headsteer.prompts import AnswerTargets, OptionTargets, encode_prompts, encode_targets
from headsteer.tasks import pairs_sha256
from headsteer.training_record import TrainingRecord

QA = hs.get_template("qa")
TRAIN = [hs.Pair(a, b) for a, b in [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow")]]


class OneHeadProblem:
    """A synthetic ScoredForward: head 2 moves the logits strongly, the others only weakly."""

    def __init__(self, n_heads, d_head, vocab=8, strong=2, weak=0.02):
        g = torch.Generator().manual_seed(0)
        self.maps = torch.randn(n_heads, vocab, d_head, generator=g)
        self.coef = torch.full((n_heads,), weak)
        self.coef[strong] = 1.0
        self.bias = torch.randn(4, vocab, generator=g)

    def __call__(self, model, layer, tokens, delta, n_scored):
        moved = torch.einsum("h,hvd,bhd->bv", self.coef, self.maps, delta)  # Δ arrives per row
        return (self.bias + moved).unsqueeze(1)


def synthetic_fit(model, optimizer, gamma, lam, steps=300, lr=0.05):
    problem = OneHeadProblem(model.cfg.n_heads, model.cfg.d_head)
    tokens = encode_prompts(model.tokenizer, QA, [p.input for p in TRAIN])
    targets = AnswerTargets(torch.full((4, 1), 3), torch.ones(4, 1, dtype=torch.bool))
    config = hs.FitConfig(layer=0, gamma=gamma, lam=lam, steps=steps, lr=lr, optimizer=optimizer)
    result = hs.fit_encoded(model, tokens, targets, config, forward=problem, progress=False)
    return result.intervention.delta, result.history


@pytest.mark.parametrize("optimizer", ["prox_adam", "fista"])
def test_regularized_proximal_fit_recovers_the_one_useful_head(gemma_tiny, optimizer):
    delta, history = synthetic_fit(gemma_tiny, optimizer, gamma=0.01, lam=0.5)
    norms = delta.norm(dim=-1)
    assert norms[2] > 0.5
    assert norms[[0, 1, 3]].eq(0).all(), f"unused heads must be exactly zero, got {norms}"
    assert history["task_loss"].iloc[-1] < 0.5 * history["task_loss"].iloc[0]


def test_unregularized_fit_uses_every_head_and_adam_gives_no_exact_zeros(gemma_tiny):
    for optimizer in ("prox_adam", "fista"):
        delta, _ = synthetic_fit(gemma_tiny, optimizer, gamma=0.0, lam=0.0)
        assert delta.norm(dim=-1).gt(0).all(), optimizer
    adam_delta, _ = synthetic_fit(gemma_tiny, "adam", gamma=0.01, lam=0.5, lr=0.02)
    assert (adam_delta == 0).float().mean() < 0.5


@pytest.mark.parametrize("optimizer", ["prox_adam", "fista", "adam"])
@pytest.mark.parametrize("loss", ["first_token", "sequence"])
def test_fit_lowers_the_task_loss_on_a_tiny_model(any_model, loss, optimizer):
    lr = {"prox_adam": 0.3, "fista": 0.5, "adam": 0.1}[optimizer]
    config = hs.FitConfig(layer=1, loss=loss, optimizer=optimizer, steps=30, lr=lr, gamma=0.001, lam=0.001)
    result = hs.fit(any_model, TRAIN, QA, config, task="toy", progress=False)
    losses = result.history["task_loss"]
    assert isinstance(result.history, pd.DataFrame) and len(result.history) == config.steps + 1
    assert losses.iloc[-1] < 0.7 * losses.iloc[0]
    assert result.intervention.fit_config == config.to_dict()
    assert result.intervention.template == QA.to_dict() and result.intervention.task == "toy"
    record = result.intervention.training  # the pairs it was given, in order, hashed; no split
    assert record.pairs == tuple(TRAIN) and record.pairs_sha256 == pairs_sha256(TRAIN) and record.split_seed is None
    assert list(result.head_norms().columns) == ["layer", "head", "norm"]


def test_option_kl_fit_moves_the_option_distribution_to_the_target(gemma_kinds):
    tokens = encode_prompts(gemma_kinds.tokenizer, QA, ["hot", "big"])
    ids = gemma_kinds.tokenizer.convert_tokens_to_ids(["cold", "small", "down"])
    options = OptionTargets(
        torch.tensor([ids, ids]),
        torch.tensor([[True, True, True], [True, True, False]]),
        torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.9, 0.0]]),
    )
    config = hs.FitConfig(layer=1, loss="option_kl", steps=60, lr=0.1, gamma=0.0, lam=0.0)
    result = hs.fit_encoded(
        gemma_kinds, tokens, options, config, task="opinions", prompt_format={"kind": "test"}, progress=False
    )
    assert result.history["task_loss"].iloc[-1] < 0.3 * result.history["task_loss"].iloc[0]
    assert (result.intervention.task, result.intervention.template, result.config) == (
        "opinions",
        {"kind": "test"},
        config,
    )
    assert result.intervention.training == TrainingRecord(n_examples=2)  # pre-tokenised: no inputs to record


def test_fit_is_deterministic_and_restores_the_model(gemma_kinds):
    gemma_kinds.train()
    config = hs.FitConfig(layer=2, steps=5, lr=0.5)
    a = hs.fit(gemma_kinds, TRAIN, QA, config, progress=False)
    b = hs.fit(gemma_kinds, TRAIN, QA, config, progress=False)
    assert torch.equal(a.intervention.delta, b.intervention.delta)
    pd.testing.assert_frame_equal(a.history, b.history)
    assert gemma_kinds.training and all(p.requires_grad for p in gemma_kinds.parameters())
    gemma_kinds.eval()


def test_fit_leaves_a_model_in_eval_mode_without_walking_it(gemma_tiny, monkeypatch):
    """Switching modes walks every module; a model already in eval mode (as loaded) is not switched at all."""
    switched = []
    monkeypatch.setattr(type(gemma_tiny), "train", lambda self, mode=True: switched.append(mode) or self)
    assert not any(m.training for m in gemma_tiny.modules())
    hs.fit(gemma_tiny, TRAIN, QA, hs.FitConfig(layer=1, steps=2), progress=False)
    assert switched == [] and not any(m.training for m in gemma_tiny.modules())


def test_non_finite_loss_is_reported_with_its_step(gemma_tiny):
    def nan_forward(model, layer, tokens, delta, n_scored):
        return torch.full((len(tokens), n_scored, model.cfg.d_vocab), float("nan")) + delta.sum()

    tokens, targets = encode_targets(gemma_tiny.tokenizer, QA, TRAIN)
    with pytest.raises(hs.NonFiniteLossError, match="step 0"):
        hs.fit_encoded(gemma_tiny, tokens, targets, hs.FitConfig(layer=0, steps=3), forward=nan_forward, progress=False)


def test_loss_and_targets_must_match(gemma_tiny):
    tokens, targets = encode_targets(gemma_tiny.tokenizer, QA, TRAIN)
    with pytest.raises(TypeError, match="option_kl' needs OptionTargets"):
        hs.fit_encoded(gemma_tiny, tokens, targets, hs.FitConfig(layer=0, steps=1, loss="option_kl"), progress=False)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(layer=-1), "layer must be"),
        (dict(gamma=float("nan")), "gamma must be"),
        (dict(lam=-1.0), "lam must be"),
        (dict(loss="mse"), "loss must be one of"),
        (dict(optimizer="sgd"), "optimizer must be one of"),
        (dict(steps=0), "steps must be"),
        (dict(lr=0.0), "lr must be"),
    ],
)
def test_config_is_validated(bad, message):
    with pytest.raises(ValueError, match=message):
        hs.FitConfig(**bad)


def test_config_round_trips():
    config = hs.FitConfig(layer=3, gamma=0.1, loss="sequence", optimizer="adam", steps=7, lr=0.2, seed=4)
    assert hs.FitConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown FitConfig fields"):
        hs.FitConfig.from_dict({"layers": 3})


def test_config_fills_in_each_optimizers_default_step_size():
    from headsteer.config import DEFAULT_LR

    for optimizer, lr in DEFAULT_LR.items():
        config = hs.FitConfig(optimizer=optimizer)
        assert config.lr == lr and config.to_dict()["lr"] == lr
        assert hs.FitConfig.from_dict(config.to_dict()) == config
    assert hs.FitConfig(optimizer="fista", lr=0.7).lr == 0.7


def test_a_sequence_fit_lowers_the_nll_of_every_answer_token_and_of_the_stop(gemma_tiny):
    """The sequence loss teaches the whole answer and where it ends; the first-token loss only its start."""
    from headsteer.fitting.forward import naive_scored_logits

    dot = hs.Template("dot", "Q: {input}\nA:", " {output}", stop=" .")  # a stop the tiny tokenizer keeps as a token
    pairs = [
        hs.Pair(a, f"{b} {c}") for a, b, c in [("hot", "cold", "up"), ("big", "small", "down"), ("fast", "slow", "up")]
    ]
    tokens, targets = encode_targets(gemma_tiny.tokenizer, dot, pairs, include_stop=True)
    assert targets.target_mask.sum(1).eq(3).all(), "two answer tokens and the stop per pair"

    def nll_per_position(delta):
        logits = naive_scored_logits(gemma_tiny, 0, tokens, delta, targets.target_ids.shape[1]).float()
        nll = -torch.log_softmax(logits, -1).gather(-1, targets.target_ids[..., None]).squeeze(-1)
        return nll.mean(0)  # [answer token 1, answer token 2, stop]

    # Layer 0: in a tiny random model, Δ at the last prompt token reaches later positions only through attention
    # in the layers after it, and weakly; the most layers after it give the clearest test.
    config = hs.FitConfig(layer=0, loss="sequence", steps=50, lr=0.5, gamma=0.0, lam=0.0)
    sequence = hs.fit(gemma_tiny, pairs, dot, config, progress=False).intervention.delta
    first = hs.fit(gemma_tiny, pairs, dot, replace(config, loss="first_token"), progress=False).intervention.delta
    with torch.no_grad():
        before, after, first_only = (nll_per_position(d) for d in (torch.zeros_like(sequence), sequence, first))
    assert (after < before).all(), (before, after)  # every answer token, and the stop
    assert after[1:].sum() < first_only[1:].sum(), "the first-token loss does not teach the rest"
