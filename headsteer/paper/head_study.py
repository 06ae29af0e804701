"""The results behind "which heads does a task use": one task's model-wide head map per seed, saved.

:func:`head_study` splits the task per seed (``split_task(task, n_train, seed)``),
runs :func:`headsteer.heads.maps.head_map` on that split and writes everything to
``out_dir`` (the files are listed in :mod:`headsteer.paper.study_files`), rewriting
the tables after each seed so a finished seed is never lost. The maps run in this
process or, with :class:`~headsteer.paper.workers.RayWorkers`, one seed per Ray
worker; the files are always written here. Nothing here plots:
:mod:`headsteer.paper.figures` draws the files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import pandas as pd

from headsteer.files import json_bytes, write_files_atomic
from headsteer.heads.maps import HeadMap, MapConfig, head_map
from headsteer.hooks import head_label
from headsteer.paper.study_files import TABLES, StudyFiles
from headsteer.paper.workers import ModelInfo, ModelOrWorkers, as_workers
from headsteer.prompts import Template
from headsteer.tasks import Task, split_task


def head_study(
    model: ModelOrWorkers,
    task: Task,
    template: Template,
    config: MapConfig,
    out_dir: str | Path,
    seeds: Sequence[int] = (0,),
    n_train: int = 10,
    max_test: int | None = 100,
    progress: bool = True,
) -> list[HeadMap]:
    """A head map per seed (its split, its resamples), written to ``out_dir``; returns the maps in seed order."""
    files = StudyFiles(Path(out_dir))
    workers = as_workers(model)
    settings = _settings(workers.model, task, template, config, n_train, max_test)
    finished: dict[int, HeadMap] = {}

    def write(result: tuple[int, HeadMap]) -> None:  # on the driver, as each seed's map arrives
        seed, found = result
        finished[seed] = found
        _save_interventions(files, found, task, n_train, seed)
        _save_tables(files, list(finished.values()), list(finished), settings)

    work = partial(_seed_map, task, template, config, n_train, max_test, progress)
    workers.run(list(seeds), work, write)
    return [finished[seed] for seed in seeds]


def _seed_map(
    task: Task,
    template: Template,
    config: MapConfig,
    n_train: int,
    max_test: int | None,
    progress: bool,
    model,
    seed: int,
) -> Iterator[tuple[int, HeadMap]]:
    """The head map of ``seed``'s split (in this process or on a worker)."""
    train, test = split_task(task, n_train=n_train, seed=seed, max_test=max_test)
    seeded = replace(config, fit=replace(config.fit, seed=seed))
    yield seed, head_map(model, train, test, template, seeded, task.name, progress)


def _save_interventions(files: StudyFiles, found: HeadMap, task: Task, n_train: int, seed: int) -> None:
    """Each layer's Δ (and the one without penalty), recording the split it was fitted on."""
    for variant, ivs in (("regularized", found.regularized), ("unregularized", found.unregularized)):
        for iv in ivs:
            if iv.training is None:
                raise ValueError(f"the map's Δ at layer {iv.layer} records no training pairs")
            recorded = replace(iv, training=iv.training.with_split(task, n_train, seed))  # the split, checked
            recorded.save(files.intervention(seed, iv.layer, variant))


def _save_tables(files: StudyFiles, maps: Sequence[HeadMap], seeds: Sequence[int], settings: dict) -> None:
    """Every table, all seeds so far, then ``stability.json`` last (it marks a finished map)."""
    out = []
    for name in TABLES:  # each is the HeadMap attribute of the same name
        seeded = pd.concat([getattr(m, name).assign(seed=s) for m, s in zip(maps, seeds)], ignore_index=True)
        seeded = seeded[["seed", *(c for c in seeded.columns if c != "seed")]]
        out.append((files.table(name), seeded.to_csv(index=False).encode("utf-8")))
    record = {"settings": settings, "seeds": {str(s): _seed_record(m) for m, s in zip(maps, seeds)}}
    write_files_atomic([*out, (files.stability, json_bytes(record))])


def _seed_record(found: HeadMap) -> dict:
    s = found.stability
    return {
        "n_train": len(found.train),
        "n_test": len(found.test),
        "train_inputs": [p.input for p in found.train],
        "chosen": s.chosen,
        "threshold": s.threshold,
        "expected_false": s.expected_false,
        "n_heads": s.n_heads,
        "q_max": s.q_max,
        "region": list(s.region),
        "q": s.q,
        "error_bound": s.error_bound,
        "stable": s.stable_labels(),
        "fv_top": [head_label(*h) for h in sorted(found.fv_top)],
        "timings_s": {k: round(v, 1) for k, v in found.timings.items()},
    }


def _settings(
    model: ModelInfo, task: Task, template: Template, config: MapConfig, n_train: int, max_test: int | None
) -> dict:
    return {
        "task": task.name,
        "task_sha256": task.sha256,
        "task_source": task.source,
        "model": dict(model.settings),
        "template": template.to_dict(),
        "map_config": asdict(config),
        "n_train": n_train,
        "max_test": max_test,
    }
