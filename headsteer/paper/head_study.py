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

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from headsteer.baselines.function_vectors import FVConfig, fit_function_vector
from headsteer.config import FitConfig
from headsteer.files import write_csv_atomic
from headsteer.fitting.loop import FitJob, fit_many
from headsteer.heads import DEFAULT_PATH, head_table, path_jobs, path_table
from headsteer.paper.study_files import VARIANTS, StudyFiles
from headsteer.prompts import Template
from headsteer.runs import record_split
from headsteer.tasks import Task, split_task


def head_study(
    model,
    task: Task,
    template: Template,
    config: FitConfig,
    out_dir: str | Path,
    n_train: int = 10,
    strengths: Sequence[float] = DEFAULT_PATH,
    fv_top_k: int = 10,
    progress: bool = True,
) -> Path:
    """Fit and write everything listed in the module docstring; returns ``out_dir``."""
    train, _ = split_task(task, n_train=n_train, seed=config.seed)
    fits = [
        FitJob(tuple(train), config, task.name),
        FitJob(tuple(train), replace(config, gamma=0.0, lam=0.0), task.name),
    ]
    results = fit_many(model, fits + path_jobs(train, config, strengths, task.name), template, progress=progress)
    results, path = results[: len(VARIANTS)], path_table(results[len(VARIANTS) :])  # one batch for all fits
    results = [record_split(r, task, n_train, config.seed) for r in results]  # the saved Δ's name their split
    heads = pd.concat([head_table([r.intervention]).assign(variant=v) for v, r in zip(VARIANTS, results)])
    _, effects = fit_function_vector(
        model, train, template, FVConfig(top_k=fv_top_k, seed=config.seed), task.name, progress
    )
    files = StudyFiles(Path(out_dir))  # the folder is created only once every fit is done
    for variant, result in zip(VARIANTS, results):
        result.intervention.save(files.intervention(variant))
    for target, frame in ((files.heads, heads), (files.path, path), (files.fv_effects, effects)):
        write_csv_atomic(target, frame.reset_index(drop=True))
    return files.folder
