"""Seeded fit-and-evaluate runs: split, fit Δ, score zero-shot and Δ on the held-out pairs.

A fit from a seeded split records that split (:func:`record_split`), and a
saved intervention is scored only on pairs it was not trained on
(:func:`heldout_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from headsteer.config import FitConfig
from headsteer.errors import ArtifactError, ConfigError, TaskError
from headsteer.evaluate import DEFAULT_MAX_NEW_TOKENS, evaluate_pairs, summarize
from headsteer.files import ArtifactPaths, json_bytes, write_files_atomic
from headsteer.fitting.forward import naive_scored_logits
from headsteer.fitting.loop import FitResult, fit
from headsteer.intervention import Intervention
from headsteer.prompts import Template
from headsteer.tasks import Pair, Task, split_task


@dataclass(frozen=True)
class Run:
    """One seeded fit with its held-out scores."""

    result: FitResult
    train: list[Pair]
    test: list[Pair]
    zero_shot: pd.DataFrame  # evaluate_pairs table without Δ
    fitted: pd.DataFrame  # evaluate_pairs table with Δ

    def metrics(self) -> dict:
        iv = self.result.intervention
        return {
            "task": iv.task,
            "model": iv.model.name,
            "layer": iv.layer,
            "fit_config": iv.fit_config,
            "template": iv.template,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "train_inputs": [p.input for p in self.train],
            "final_task_loss": float(self.result.history["task_loss"].iloc[-1]),
            "active_heads": iv.active_heads(),
            "zero_shot": summarize(self.zero_shot),
            "fitted": summarize(self.fitted),
        }

    def save(self, out: str | Path) -> Path:
        """The intervention, ``out.metrics.json`` and ``out.history.csv``, as one unit; returns the metrics' path.

        The intervention's JSON goes last, so a reader never takes a half-written run for a whole one.
        """
        paths = ArtifactPaths.of(out)
        tensors, meta = self.result.intervention.artifact_files(paths.stem)
        history = self.result.history.to_csv(index=False).encode("utf-8")
        write_files_atomic([tensors, (paths.metrics, json_bytes(self.metrics())), (paths.history, history), meta])
        return paths.metrics


def fit_and_score(
    model,
    task: Task,
    template: Template,
    config: FitConfig,
    n_train: int = 10,
    max_test: int | None = 200,
    progress: bool = True,
    fast: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Run:
    """Split with ``config.seed``, fit on the training pairs, score zero-shot and Δ on the test pairs.

    ``fast=False`` fits with the naive full forward (the reference) instead of the prefix cache.
    """
    train, test = split_task(task, n_train=n_train, seed=config.seed, max_test=max_test)
    forward = None if fast else naive_scored_logits
    result = fit(model, train, template, config, task=task.name, forward=forward, progress=progress)
    result = record_split(result, task, n_train, config.seed)
    zero = evaluate_pairs(model, test, template, (), max_new_tokens=max_new_tokens, progress=progress)
    fitted = evaluate_pairs(
        model, test, template, (result.intervention,), max_new_tokens=max_new_tokens, progress=progress
    )
    return Run(result, train, test, zero, fitted)


def record_split(result: FitResult, task: Task, n_train: int, seed: int) -> FitResult:
    """``result`` with its training record naming the split it came from: ``split_task(task, n_train, seed)``.

    The split is redone and must give the recorded pairs (``TrainingRecord.with_split``).
    """
    iv = result.intervention
    if iv.training is None:
        raise ArtifactError(f"intervention for task {iv.task!r} records no training pairs, so no split to name")
    return replace(result, intervention=replace(iv, training=iv.training.with_split(task, n_train, seed)))


@dataclass(frozen=True)
class HeldOut:
    """The pairs of a task an intervention may be scored on, and how they were chosen."""

    pairs: tuple[Pair, ...]
    split_seed: int | None  # the split redone (None: the fit recorded none, every pair of the task is a candidate)
    n_train: int | None
    excluded: int  # candidates dropped because their input is one of the recorded training inputs
    warning: str | None  # set when the task is not the data the fit recorded


def heldout_pairs(task: Task, iv: Intervention, max_test: int | None = None, seed: int | None = None) -> HeldOut:
    """The pairs of ``task`` that ``iv`` may be scored on: never one whose input it was trained on.

    Candidates: with a recorded split, the test part of the fit's split redone
    (``split_task(task, record.n_train, seed)``, ``seed`` defaulting to the recorded one); without
    one, every pair of the task in order. Then every candidate whose input is
    among the recorded training inputs is dropped, so another data file, another
    n_train or another seed never lets a training input through; the first
    ``max_test`` remain. Raises ArtifactError for an intervention that records
    no training inputs (format 1, hand-made, or fitted on pre-tokenised prompts).
    """
    record = iv.training
    if record is None:
        raise ArtifactError(
            f"intervention for task {iv.task!r} records no training inputs (a format-1 file or a hand-made Δ), "
            "so no pair can be shown to be held out; refit it to score it"
        )
    inputs = record.training_inputs()
    if record.split_seed is not None and record.n_train is not None:  # both set or both None (TrainingRecord)
        split_seed = record.split_seed if seed is None else seed
        candidates = split_task(task, n_train=record.n_train, seed=split_seed)[1]
    elif seed is not None:
        raise ConfigError(
            f"split seed {seed}: the intervention was fitted on pairs given directly, not on a "
            "seeded split, so there is no split to redo; leave the seed out"
        )
    else:
        split_seed, candidates = None, list(task.pairs)
    held = [p for p in candidates if p.input not in inputs]
    if not held:
        raise TaskError(
            f"task {task.name!r} ({task.source}) has no pair whose input the intervention was not trained on"
        )
    warning = None
    if record.task_sha256 is not None and record.task_sha256 != task.sha256:
        warning = (
            f"task {task.name!r} ({task.source}) is not the data the intervention was fitted on "
            f"({record.task_source}, sha256 {record.task_sha256[:12]}…); its {len(inputs)} training inputs "
            "are left out all the same"
        )
    return HeldOut(tuple(held[:max_test]), split_seed, record.n_train, len(candidates) - len(held), warning)
