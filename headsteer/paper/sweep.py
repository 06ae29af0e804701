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

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from headsteer.config import FitConfig
from headsteer.errors import ConfigError
from headsteer.evaluate import DEFAULT_MAX_NEW_TOKENS, evaluate_pairs
from headsteer.fitting.forward import naive_scored_logits
from headsteer.fitting.loop import FitJob, fit_many
from headsteer.paper.results import JSON, InputHash, ResultsFile, Settings, model_settings
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
    model,
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
    fits with the naive full forward (the reference). Refuses (ConfigError)
    empty or repeated layers or seeds and layers the model does not have.
    """
    check_grid(layers, seeds, model.cfg.n_layers)
    settings = sweep_settings(model, task, template, config, n_train, max_test, max_new_tokens)
    store = ResultsFile(Path(out), tuple(COLUMNS), ("layer", "seed"), settings) if out else None
    done = store.open() if store else pd.DataFrame(columns=COLUMNS)
    finished = set(zip(done["layer"].astype(int), done["seed"].astype(int)))
    todo = {s: [layer for layer in layers if (layer, s) not in finished] for s in seeds}
    bar = tqdm(total=sum(map(len, todo.values())), desc=f"sweep {task.name}", disable=not progress)
    for seed, cell_layers in todo.items():
        if not cell_layers:
            continue
        rows = pd.DataFrame(
            _run_seed(
                model, task, template, config, cell_layers, seed, n_train, max_test, progress, fast, max_new_tokens
            ),
            columns=COLUMNS,
        )
        done = store.add(rows) if store else pd.concat([done, rows], ignore_index=True)
        bar.update(len(cell_layers))
    bar.close()
    wanted = done["layer"].astype(int).isin(layers) & done["seed"].astype(int).isin(seeds)
    return done[wanted].sort_values(["layer", "seed"]).reset_index(drop=True)


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
    model,
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
        "model": model_settings(model),
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
    zero = evaluate_pairs(model, test, template, (), max_new_tokens=max_new_tokens, progress=False)
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


def _score_all(model, test: list[Pair], template: Template, interventions, max_new_tokens: int) -> pd.DataFrame:
    """``evaluate_pairs`` of every intervention on ``test``, as one batch of per-row Δ's."""
    for iv in interventions:
        iv.check_fits(model)
    n = len(test)
    layers = torch.tensor([iv.layer for iv in interventions]).repeat_interleave(n)
    deltas = torch.stack([iv.delta for iv in interventions]).repeat_interleave(n, dim=0)
    return evaluate_pairs(
        model,
        test * len(interventions),
        template,
        RowDeltas(layers, deltas),
        batch_size=128,
        max_new_tokens=max_new_tokens,
        progress=False,
    )
