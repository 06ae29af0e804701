"""Layer × seed sweeps (the paper's Figure 1): batched fits, batched scoring, resumable results.

Each finished batch of cells is merged into the results CSV
(:class:`headsteer.paper.results.ResultsFile`: under a lock, by atomic
replace), so a sweep killed at any point keeps every cell written so far,
and sweeps of other layers or seeds may write the same file at once;
restarted with the same settings it skips those cells. The settings (the
task's data by hash, the model's fingerprint, template, fit config) live in
``<out>.settings.json`` and a run with other settings is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from headsteer.config import FitConfig
from headsteer.errors import ConfigError
from headsteer.evaluate import DEFAULT_MAX_NEW_TOKENS, evaluate_pairs
from headsteer.fitting.forward import naive_scored_logits
from headsteer.fitting.loop import FitJob, fit_many
from headsteer.paper.results import JSON, InputHash, ResultsFile, Settings
from headsteer.paper.workers import ModelOrWorkers, as_workers
from headsteer.prompts import Template
from headsteer.steering import RowDeltas
from headsteer.tasks import Pair, Task, split_task

COLUMNS = [
    "task",
    "layer",
    "seed",
    "n_train",
    "n_test",
    "first_token",
    "exact_match",
    "zero_shot_first_token",
    "zero_shot_exact_match",
    "final_task_loss",
    "active_heads",
]


def sweep(
    model: ModelOrWorkers,
    task: Task,
    template: Template,
    layers: Sequence[int],
    seeds: Sequence[int],
    config: FitConfig = FitConfig(),
    n_train: int = 10,
    max_test: int | None = 100,
    out: str | Path | None = None,
    progress: bool = True,
    fast: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> pd.DataFrame:
    """Fit and score every (layer, seed) cell; one tidy row per cell.

    Cells of one seed are fitted together in one batch (``fit_many``) and
    scored together (``RowDeltas``); with ``out``, results are merged into it
    after each batch and finished cells are skipped on restart. ``fast=False``
    fits with the naive full forward (the reference). ``model`` may be
    :class:`~headsteer.paper.workers.RayWorkers`: each seed's batch then runs on
    an actor and its rows are merged here. Refuses (ConfigError) empty or
    repeated layers or seeds and layers the model does not have.
    """
    workers = as_workers(model)
    check_grid(layers, seeds, workers.model.n_layers)
    settings = sweep_settings(workers, task, template, config, n_train, max_test, max_new_tokens)
    store = ResultsFile(Path(out), tuple(COLUMNS), ("layer", "seed"), settings) if out else None
    done = store.open() if store else pd.DataFrame(columns=COLUMNS)
    finished = set(zip(done["layer"].astype(int), done["seed"].astype(int)))
    todo = [_Seed(s, tuple(layer for layer in layers if (layer, s) not in finished)) for s in seeds]
    todo = [unit for unit in todo if unit.layers]
    bar = tqdm(total=sum(len(unit.layers) for unit in todo), desc=f"sweep {task.name}", disable=not progress)

    def add(rows: pd.DataFrame) -> None:
        nonlocal done
        done = store.add(rows) if store else pd.concat([done, rows], ignore_index=True)
        bar.update(len(rows))

    work = partial(_seed_work, task, template, config, n_train, max_test, progress, fast, max_new_tokens)
    workers.run(todo, work, add)
    bar.close()
    wanted = done["layer"].astype(int).isin(layers) & done["seed"].astype(int).isin(seeds)
    return done[wanted].sort_values(["layer", "seed"]).reset_index(drop=True)


@dataclass(frozen=True)
class _Seed:
    """One unit of a sweep: the layers of one seed still to do, fitted as one batch."""

    seed: int
    layers: tuple[int, ...]


def _seed_work(
    task: Task,
    template: Template,
    config: FitConfig,
    n_train: int,
    max_test: int | None,
    progress: bool,
    fast: bool,
    max_new_tokens: int,
    model,
    unit: _Seed,
) -> Iterator[pd.DataFrame]:
    """A seed's rows, as one frame (where the sweep's work runs: here or on a worker)."""
    rows = _run_seed(
        model, task, template, config, list(unit.layers), unit.seed, n_train, max_test, progress, fast, max_new_tokens
    )
    yield pd.DataFrame(rows, columns=COLUMNS)


def check_grid(layers: Sequence[int], seeds: Sequence[int], n_layers: int) -> None:
    """Refuse an empty or repeated list of layers or seeds, and layers outside 0..n_layers-1, naming them."""
    for name, values in (("layers", list(layers)), ("seeds", list(seeds))):
        if not values:
            raise ConfigError(f"sweep: no {name} given; name at least one")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"sweep: {name} must be integers, got {values}")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"sweep: {name} {values} name {repeated} more than once; name each once")
    outside = [layer for layer in layers if not 0 <= layer < n_layers]
    if outside:
        raise ConfigError(f"sweep: layers {outside} are out of range; the model has layers 0..{n_layers - 1}")


def sweep_settings(
    model: ModelOrWorkers,
    task: Task,
    template: Template,
    config: FitConfig,
    n_train: int,
    max_test: int | None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Settings:
    """What a sweep's rows depend on. The config's layer and seed are left out: each cell sets its own."""
    fit = {k: v for k, v in config.to_dict().items() if k not in ("layer", "seed")}
    values: dict[str, JSON] = {
        "task": task.name,
        "template": template.to_dict(),
        "config": fit,
        "n_train": n_train,
        "max_test": max_test,
        "max_new_tokens": max_new_tokens,
        "model": as_workers(model).model.settings,
    }
    return Settings(values, {task.name: InputHash.of_task(task)})


def _run_seed(
    model,
    task,
    template,
    config,
    layers,
    seed,
    n_train,
    max_test,
    progress=False,
    fast=True,
    max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
) -> list[dict]:
    """Fit Δ at every layer on one seed's training sample, then score all of them at once."""
    train, test = split_task(task, n_train=n_train, seed=seed, max_test=max_test)
    jobs = [FitJob(tuple(train), replace(config, layer=layer, seed=seed), task.name) for layer in layers]
    forward = None if fast else naive_scored_logits
    results = fit_many(model, jobs, template, forward, progress=progress)  # an inner bar over steps
    # Only the metrics are kept: a wrong answer stops generating where it leaves its target.
    zero = evaluate_pairs(
        model, test, template, (), max_new_tokens=max_new_tokens, progress=False, whole_predictions=False
    )
    steered = _score_all(model, test, template, [r.intervention for r in results], max_new_tokens)
    rows = []
    for k, (layer, result) in enumerate(zip(layers, results)):
        scores = steered.iloc[k * len(test) : (k + 1) * len(test)]
        rows.append(
            {
                "task": task.name,
                "layer": layer,
                "seed": seed,
                "n_train": len(train),
                "n_test": len(test),
                "first_token": scores["first_token"].mean(),
                "exact_match": scores["exact_match"].mean(),
                "zero_shot_first_token": zero["first_token"].mean(),
                "zero_shot_exact_match": zero["exact_match"].mean(),
                "final_task_loss": float(result.history["task_loss"].iloc[-1]),
                "active_heads": len(result.intervention.active_heads()),
            }
        )
    return rows


def _score_all(
    model, test: list[Pair], template: Template, interventions, max_new_tokens: int, whole_predictions: bool = False
) -> pd.DataFrame:
    """``evaluate_pairs`` of every intervention on ``test``, as one batch of per-row Δ's; rows intervention-major.

    The rows are scored pair-major (each held-out prompt once per Δ, side by side), so a batch holds a
    few prompts under every Δ and runs each prompt's prefix once (:func:`~headsteer.fitting.forward.build_prefix`
    shares identical prefixes): the prefix work of scoring K Δ's is that of scoring one. Only the metrics
    are exact unless ``whole_predictions``: a wrong prediction is its text up to where it left the target.
    """
    for iv in interventions:
        iv.check_fits(model)
    n, k = len(test), len(interventions)
    layers = torch.tensor([iv.layer for iv in interventions]).repeat(n)  # row i·k + j: pair i under Δ j
    deltas = torch.stack([iv.delta for iv in interventions]).repeat(n, 1, 1)
    scores = evaluate_pairs(
        model,
        [pair for pair in test for _ in range(k)],
        template,
        RowDeltas(layers, deltas),
        batch_size=k * max(1, 128 // k),  # whole prompts: every Δ of a prompt in one batch
        max_new_tokens=max_new_tokens,
        progress=False,
        whole_predictions=whole_predictions,
    )
    by_intervention = [i * k + j for j in range(k) for i in range(n)]
    return scores.iloc[by_intervention].reset_index(drop=True)
