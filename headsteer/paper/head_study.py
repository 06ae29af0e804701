"""The results behind "which heads does a task use": Δ with and without the penalty, the path, FV head effects.

:func:`head_study` fits, on one seeded training split, Δ at ``config``'s γ, λ
(``regularized``) and at γ = λ = 0 (``unregularized``), the regularization path
over ``strengths``, and the function vector's per-head indirect effects, and
writes them to ``out_dir`` (:class:`headsteer.paper.study_files.StudyFiles`)::

    regularized.safetensors/.json, unregularized.safetensors/.json   the two Δ's, with their split
    heads.csv       variant, task, layer, head, norm, share, rank, active
    path.csv        task, layer, strength, head, norm, active, task_loss
    fv_effects.csv  task, layer, head, aie, rank (the FV's ranking over every head)

:mod:`headsteer.paper.figures` draws them; nothing here plots.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pandas as pd

from headsteer.baselines.function_vectors import FVConfig, fit_function_vector
from headsteer.config import FitConfig
from headsteer.files import write_csv_atomic
from headsteer.fitting.loop import FitJob, FitResult, fit_many
from headsteer.heads import DEFAULT_PATH, head_table, path_jobs, path_table
from headsteer.paper.study_files import VARIANTS, StudyFiles
from headsteer.paper.workers import ModelOrWorkers, as_workers
from headsteer.prompts import Template
from headsteer.runs import record_split
from headsteer.tasks import Task, split_task


def head_study(
    model: ModelOrWorkers,
    task: Task,
    template: Template,
    config: FitConfig,
    out_dir: str | Path,
    n_train: int = 10,
    strengths: Sequence[float] = DEFAULT_PATH,
    fv_top_k: int = 10,
    progress: bool = True,
) -> Path:
    """Fit and write everything listed in the module docstring; returns ``out_dir``.

    With :class:`~headsteer.paper.workers.RayWorkers` the fits run on a worker and the files are written here.
    """
    files = StudyFiles(Path(out_dir))

    def write(study: _Study) -> None:  # the folder is created only once every fit is done
        for variant, result in zip(VARIANTS, study.results):
            result.intervention.save(files.intervention(variant))
        for target, frame in ((files.heads, study.heads), (files.path, study.path), (files.fv_effects, study.effects)):
            write_csv_atomic(target, frame.reset_index(drop=True))

    work = partial(_study_work, task, template, config, n_train, tuple(strengths), fv_top_k, progress)
    as_workers(model).run([config.seed], work, write)
    return files.folder


@dataclass(frozen=True)
class _Study:
    """What the study writes: the two Δ's, their head table, the path, the FV's head effects."""

    results: list[FitResult]
    heads: pd.DataFrame
    path: pd.DataFrame
    effects: pd.DataFrame


def _study_work(
    task: Task,
    template: Template,
    config: FitConfig,
    n_train: int,
    strengths: tuple[float, ...],
    fv_top_k: int,
    progress: bool,
    model,
    seed: int,
) -> Iterator[_Study]:
    """Every fit of the study on the split of ``seed`` (here or on a worker)."""
    train, _ = split_task(task, n_train=n_train, seed=seed)
    fits = [
        FitJob(tuple(train), config, task.name),
        FitJob(tuple(train), replace(config, gamma=0.0, lam=0.0), task.name),
    ]
    results = fit_many(model, fits + path_jobs(train, config, strengths, task.name), template, progress=progress)
    results, path = results[: len(VARIANTS)], path_table(results[len(VARIANTS) :])  # one batch for all fits
    results = [record_split(r, task, n_train, seed) for r in results]  # the saved Δ's name their split
    heads = pd.concat([head_table([r.intervention]).assign(variant=v) for v, r in zip(VARIANTS, results)])
    _, effects = fit_function_vector(model, train, template, FVConfig(top_k=fv_top_k, seed=seed), task.name, progress)
    yield _Study(results, heads, path, effects)
