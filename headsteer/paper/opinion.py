"""Opinion steering on OpinionQA (the paper's Table 3): Δ that makes the model answer like a group.

One survey question per prompt, its options lettered, then an answer cue::

    Question: How safe, if at all, would you say your local community is from crime? Would you say it is
    A. Very safe
    B. Somewhat safe
    C. Not too safe
    D. Not at all safe
    Answer:

The model's answer distribution q is the next-token softmax restricted to the
option letters (" A", " B", ...). Δ is fitted, and every method scored, by a
KL divergence between q and the group's distribution p, in both directions:

    KL(q ‖ p̃) = Σ_k q_k (log q_k − log p̃_k)    the paper's (loss ``option_kl_reverse``, the reference),
    KL(p ‖ q) = Σ_k p_k (log p_k − log q_k)     the other (loss ``option_kl``),

with p̃ = (1 − ε) p + ε/K (ε = 1%) so that an option the group never chose
costs a finite amount (:func:`headsteer.fitting.losses.option_kl_reverse`).
The paper's direction is mode-seeking (small when the model answers where the
group does); the other is mass-covering (large when the model gives little
probability to an answer the group often gives).

Methods, on the same held-out questions of each (group, seed):

* ``uniform``: q uniform over the options (a reference; no model);
* ``unsteered``: the model on the plain prompt;
* ``0-shot``: the plain prompt after one persona line naming the group;
* ``10-shot``: the persona line, then the 10 training questions each answered
  with the group's most common option (its letter), then the question;
* ``Δ (ours)``: the plain prompt with Δ fitted on the 10 training questions with the
  config's loss (default: the paper's KL(model ‖ group));
* ``Δ forward KL``: the same with KL(group ‖ model);
* ``Δ unregularized``: the config's loss without the penalty (γ = λ = 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from headsteer.config import OPTION_LOSSES, FitConfig, OptionLossName
from headsteer.errors import ConfigError, TaskError
from headsteer.fitting.forward import build_prefix, run_suffix, shared_prefix_final_hidden
from headsteer.fitting.loop import FitResult, fit_encoded
from headsteer.fitting.losses import OPTION_SMOOTHING, option_kl, option_kl_reverse, option_log_probs
from headsteer.fitting.unembed import FinalHidden
from headsteer.intervention import Intervention
from headsteer.paper.experiment import Cell, ExperimentConfig, Method, check_number
from headsteer.paper.opinionqa import OpinionGroup, OpinionQAError, OpinionQuestion, split_questions
from headsteer.paper.results import JSON, InputHash, Settings, model_settings
from headsteer.paper.runner import run_methods
from headsteer.prompts import OptionTargets, encode_continuations, encode_texts

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# What every method is scored by, per held-out question: KL(group ‖ model) and the paper's KL(model ‖ group).
OPINION_METRICS = ("kl", "kl_reverse")
PROMPT_FORMAT = {
    "kind": "opinionqa",
    "prompt": "Question: {question}\n{letter}. {option}\n...\nAnswer:",
    "option_token": " {letter}",
}
PERSONAS = {
    "INCOME": "Answer as a person whose annual family income is {group}.",
    "POLIDEOLOGY": "Answer as a person whose political ideology is {group}.",
    "CREGION": "Answer as a person who lives in the {group} of the United States.",
    "NONE": "Answer as a person whose political party affiliation is {group}.",
}


def question_block(question: OpinionQuestion, answer: str | None = None) -> str:
    """The question, its lettered options and "Answer:" (followed by `` answer`` if given)."""
    if len(question.options) > len(LETTERS):
        raise OpinionQAError(f"question {question.key} has {len(question.options)} options; at most {len(LETTERS)}")
    options = [f"{letter}. {option}" for letter, option in zip(LETTERS, question.options)]
    return "\n".join([f"Question: {question.question}", *options, "Answer:" + (f" {answer}" if answer else "")])


def persona(group: OpinionGroup) -> str:
    return PERSONAS.get(group.attribute, "Answer as a person in the group: {group}.").format(group=group.name)


def modal_letter(question: OpinionQuestion) -> str:
    """The letter of the group's most common answer."""
    return LETTERS[max(range(len(question.target)), key=question.target.__getitem__)]


def few_shot_context(group: OpinionGroup, shots: Sequence[OpinionQuestion]) -> str:
    """The persona line and each shot answered with the group's modal letter, ready for the next question."""
    return "\n\n".join([persona(group), *(question_block(s, modal_letter(s)) for s in shots)]) + "\n\n"


def option_token_ids(tokenizer, n_options: int) -> list[int]:
    """Token ids of " A", " B", ...; each letter must be one token after "Answer:"."""
    ids = []
    for letter in LETTERS[:n_options]:
        tokens = tokenizer.encode(f" {letter}", add_special_tokens=False)
        if len(tokens) != 1:
            raise TaskError(f"option letter {letter!r} is {len(tokens)} tokens for this tokenizer; it must be one")
        ids.append(tokens[0])
    return ids


def option_targets(tokenizer, questions: Sequence[OpinionQuestion]) -> OptionTargets:
    """Per row, the option-letter ids with the group's distribution (rows with fewer options pad)."""
    width = max(len(q.options) for q in questions)
    letters = option_token_ids(tokenizer, width)
    mask = torch.tensor([[k < len(q.options) for k in range(width)] for q in questions])
    probs = torch.tensor([[q.target[k] if k < len(q.options) else 0.0 for k in range(width)] for q in questions])
    return OptionTargets(torch.tensor(letters).expand(len(questions), width).clone(), mask, probs)


@torch.no_grad()
def score_questions(
    model,
    questions: Sequence[OpinionQuestion],
    prompts: Sequence[str],
    intervention: Intervention | None = None,
    context: str = "",
    batch_size: int = 16,
) -> pd.DataFrame:
    """Per question: the model's option distribution q, KL(p ‖ q) and KL(q ‖ p̃).

    ``prompts[i]`` is question i's prompt; Δ (``intervention``) goes at its
    last token. ``context`` is text before every prompt (e.g. few-shot
    demonstrations), run once and shared; it cannot be combined with Δ.
    """
    if intervention is not None:
        if context:
            raise ValueError("score_questions: a shared context cannot be combined with an intervention")
        intervention.check_fits(model)
    rows = []
    for start in range(0, len(questions), batch_size):
        chunk, texts = list(questions[start : start + batch_size]), list(prompts[start : start + batch_size])
        targets = option_targets(model.tokenizer, chunk)
        scored = _final_hidden(model, texts, intervention, context)
        q = option_log_probs(scored, targets).exp().cpu()
        kl, kl_reverse = option_kl(scored, targets).cpu(), option_kl_reverse(scored, targets).cpu()
        rows += [
            _row(question, q[i, : len(question.options)], float(kl[i]), float(kl_reverse[i]))
            for i, question in enumerate(chunk)
        ]
    return pd.DataFrame(rows)


def _final_hidden(model, texts: list[str], intervention: Intervention | None, context: str) -> FinalHidden:
    if context:
        return shared_prefix_final_hidden(model, *encode_continuations(model.tokenizer, context, texts))
    prefix = build_prefix(model, encode_texts(model.tokenizer, texts), n_scored=1)
    if intervention is None:
        return run_suffix(model, prefix)
    return run_suffix(model, prefix, intervention.layer, intervention.delta.to(model.cfg.device))


def _row(question: OpinionQuestion, q: Float[Tensor, " options"], kl: float, kl_reverse: float) -> dict:
    return {
        "key": question.key,
        "target": json.dumps([round(p, 6) for p in question.target]),
        "prediction": json.dumps([round(float(x), 6) for x in q]),
        "kl": kl,
        "kl_reverse": kl_reverse,
    }


def uniform_scores(questions: Sequence[OpinionQuestion]) -> pd.DataFrame:
    """Both KLs of the uniform q = 1/K: KL(p ‖ q) = log K − H(p), KL(q ‖ p̃) = −log K − (1/K) Σ_k log p̃_k."""
    rows = []
    for question in questions:
        k = len(question.options)
        p = torch.tensor(question.target, dtype=torch.float64)
        kl = float((p[p > 0] * (p[p > 0] * k).log()).sum())
        smoothed = (1 - OPTION_SMOOTHING) * p + OPTION_SMOOTHING / k
        kl_reverse = float(-math.log(k) - smoothed.log().mean())
        rows.append(_row(question, torch.full((k,), 1.0 / k), kl, kl_reverse))
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class OpinionConfig(ExperimentConfig):
    """The shared split and Δ fit (:class:`ExperimentConfig`) over answer options.

    Attributes:
        loss: Δ's loss, ``option_kl_reverse`` (KL(model ‖ group), the paper's) or ``option_kl`` (KL(group ‖ model)).
        lr: Δ's step size (None: the optimizer's default, ``headsteer.config.DEFAULT_LR``).
    """

    loss: OptionLossName = "option_kl_reverse"
    lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in OPTION_LOSSES:
            raise ConfigError(f"OpinionConfig.loss must be one of {OPTION_LOSSES} (--loss), got {self.loss!r}")
        if self.lr is not None:
            check_number(self, "lr", self.lr, above=0.0)

    def fit_config(self, seed: int) -> FitConfig:
        return replace(super().fit_config(seed), loss=self.loss, lr=self.lr)


@dataclass(frozen=True, eq=False)
class OpinionCell(Cell[OpinionQuestion, OpinionConfig]):
    """One (group, seed): ``task`` is the group as the user named it; ``group`` its questions and answers."""

    group: OpinionGroup

    @property
    def plain_prompts(self) -> list[str]:
        """Each held-out question's prompt without a persona or shots."""
        return [question_block(q) for q in self.test]

    def score(
        self, prompts: Sequence[str], intervention: Intervention | None = None, context: str = ""
    ) -> pd.DataFrame:
        return score_questions(self.model, self.test, prompts, intervention, context)


def fit_opinion(
    model, group: OpinionGroup, train: Sequence[OpinionQuestion], config: FitConfig, progress: bool = True
) -> FitResult:
    """Δ minimising mean_i KL_i(Δ) + γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂ on the training questions (KL: ``config.loss``)."""
    tokens, targets = (
        encode_texts(model.tokenizer, [question_block(q) for q in train]),
        option_targets(model.tokenizer, train),
    )
    name = f"opinionqa/{group.attribute}/{group.name}"
    return fit_encoded(model, tokens, targets, config, name, PROMPT_FORMAT, progress=progress)


def _delta(cell: OpinionCell, config: FitConfig) -> pd.DataFrame:
    """The held-out questions' scores under Δ fitted with ``config`` (the cell's own fit or a variant of it)."""
    result = fit_opinion(cell.model, cell.group, cell.train, config, progress=False)
    return cell.score(cell.plain_prompts, result.intervention)


# How each of OPINION_METHODS runs on a cell, in its order.
METHOD_RUNS: dict[str, Method[OpinionCell]] = {
    "uniform": lambda c: uniform_scores(c.test),
    "unsteered": lambda c: c.score(c.plain_prompts),
    "0-shot": lambda c: c.score(c.plain_prompts, context=persona(c.group) + "\n\n"),
    "10-shot": lambda c: c.score(c.plain_prompts, context=few_shot_context(c.group, c.train)),
    "Δ (ours)": lambda c: _delta(c, c.fit_config()),
    "Δ forward KL": lambda c: _delta(c, replace(c.fit_config(), loss="option_kl")),
    "Δ unregularized": lambda c: _delta(c, replace(c.fit_config(), gamma=0.0, lam=0.0)),
}


def build_opinion_table(
    model,
    groups: dict[str, OpinionGroup],
    seeds: Sequence[int],
    config: OpinionConfig = OpinionConfig(),
    out: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (group, method, seed) with both mean KLs over held-out questions; resumable with ``out``."""
    settings = opinion_settings(model, groups, config)

    def make_cell(name: str, seed: int) -> OpinionCell:
        train, test = split_questions(groups[name], config.n_train, seed, config.max_test)
        return OpinionCell(model=model, task=name, seed=seed, train=train, test=test, config=config, group=groups[name])

    cells = [(name, s) for name in groups for s in seeds]
    return run_methods(
        cells,
        make_cell,
        METHOD_RUNS,
        settings,
        out,
        progress,
        desc="opinion",
        metrics=OPINION_METRICS,
        item_columns=("key", "target", "prediction"),
    )


def opinion_settings(model, groups: dict[str, OpinionGroup], config: OpinionConfig) -> Settings:
    """What the opinion rows depend on: each group's questions and targets (by hash), prompts, config, model."""
    values: dict[str, JSON] = {
        "config": config.to_dict(),
        "prompt": PROMPT_FORMAT,
        "personas": PERSONAS,
        "model": model_settings(model),
    }
    inputs = {
        name: InputHash("OpinionQA group", g.sha256, f"{g.source} ({g.attribute}:{g.name})")
        for name, g in groups.items()
    }
    return Settings(values, inputs)
