"""Task composition (the paper's Table 2): does Δ_outer + Δ_inner do outer∘inner?

A composed task chains two word tasks: English→French∘Antonym maps ``x`` to
the French word for the antonym of ``x``. Its pairs are the chains
``x →inner→ y →outer→ z`` whose intermediate ``y`` (compared case-folded) is
both an inner output and an outer input; the pair is ``(x, z)``.

For each seed the composed pairs are split into N training and held-out
pairs. Each single Δ is fitted on N pairs of its own task drawn only from
pairs that no held-out chain uses (no inner pair with a held-out ``x``, no
outer pair with a held-out ``y``), so no method sees a step of a test item.
Methods, all on the composed held-out pairs:

* ``0-shot``: the model alone;
* ``Δ inner only`` / ``Δ outer only``: one single-task Δ;
* ``Ours (Add)``: Δ_outer + Δ_inner, each fitted on its own task at the same
  layer, applied unchanged;
* ``Ours (Re-optimized)``: Δ fitted on the N composed training pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from headsteer.fitting.loop import FitJob, fit_many
from headsteer.intervention import Intervention
from headsteer.paper.experiment import Method, PairCell, PairConfig
from headsteer.paper.results import InputHash, Settings, model_settings
from headsteer.paper.runner import run_methods
from headsteer.prompts import Template
from headsteer.tasks import Pair, Task, TaskError, split_task

SYMBOL = "∘"
# The paper's four composed tasks, as (outer, inner).
PAPER_COMPOSITIONS = (
    ("english-french", "antonym"),
    ("english-german", "antonym"),
    ("english-french", "synonym"),
    ("english-german", "synonym"),
)


@dataclass(frozen=True)
class Chain:
    """One composed example: ``input`` →inner→ ``middle`` →outer→ ``output``."""

    input: str
    middle: str
    output: str


@dataclass(frozen=True)
class ComposedTask:
    outer: Task
    inner: Task
    chains: tuple[Chain, ...]

    @property
    def name(self) -> str:
        return f"{self.outer.name}{SYMBOL}{self.inner.name}"

    @property
    def task(self) -> Task:
        return Task(
            self.name, tuple(Pair(c.input, c.output) for c in self.chains), f"{self.outer.source} ∘ {self.inner.source}"
        )

    def __len__(self) -> int:
        return len(self.chains)


def compose_tasks(outer: Task, inner: Task, min_pairs: int = 20) -> ComposedTask:
    """outer∘inner from the inner pairs whose output is an outer input (first outer pair per input wins)."""
    outer_of: dict[str, str] = {}
    for pair in outer.pairs:
        outer_of.setdefault(pair.input.casefold(), pair.output)
    seen: set[str] = set()
    chains = []
    for pair in inner.pairs:
        middle = pair.output.casefold()
        if middle in outer_of and pair.input not in seen:
            seen.add(pair.input)
            chains.append(Chain(pair.input, pair.output, outer_of[middle]))
    composed = ComposedTask(outer, inner, tuple(chains))
    if len(chains) < min_pairs:
        raise TaskError(
            f"composed task {composed.name!r} has {len(chains)} chained pairs ({inner.name} outputs that are "
            f"{outer.name} inputs); at least {min_pairs} are needed"
        )
    return composed


@dataclass(frozen=True)
class ComposeConfig(PairConfig):
    """The split sizes and Δ's layer and fit, shared by the single, summed and re-optimized Δ."""

    @property
    def min_pairs(self) -> int:
        """A composed task needs the N training pairs and at least 10 held-out ones."""
        return self.n_train + 10


def single_task_train(
    composed: ComposedTask, test: Sequence[Pair], n_train: int, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """N inner and N outer training pairs that no held-out chain uses."""
    held_out = {p.input for p in test}
    middles = {c.middle.casefold() for c in composed.chains if c.input in held_out}
    inner_pool = [p for p in composed.inner.pairs if p.input not in held_out]
    outer_pool = [p for p in composed.outer.pairs if p.input.casefold() not in middles]
    picks = []
    for task, pool in ((composed.inner, inner_pool), (composed.outer, outer_pool)):
        if len(pool) <= n_train:
            raise TaskError(
                f"{task.name!r}: {len(pool)} pairs are not used by a held-out chain of {composed.name!r}; "
                f"n_train={n_train} needs more (score fewer held-out pairs)"
            )
        train, _ = split_task(Task(task.name, tuple(pool), task.source), n_train=n_train, seed=seed)
        picks.append(list(train))
    return picks[0], picks[1]


@dataclass(frozen=True)
class ComposedDeltas:
    """The three Δ's of a composition cell, all at the config's layer with its fit."""

    inner: Intervention  # fitted on N pairs of the inner task
    outer: Intervention  # fitted on N pairs of the outer task
    reoptimized: Intervention  # fitted on the cell's N composed training pairs


@dataclass(frozen=True, eq=False)
class ComposeCell(PairCell[ComposeConfig]):
    """One (composed task, seed): its composed split and each single task's training pairs."""

    composed: ComposedTask
    inner_train: list[Pair]  # N inner pairs that no held-out chain uses (:func:`single_task_train`)
    outer_train: list[Pair]  # N outer pairs that no held-out chain uses

    @cached_property
    def deltas(self) -> ComposedDeltas:
        """The inner, outer and re-optimized Δ, fitted as one batch the first time a method needs one."""
        config = self.fit_config()
        jobs = [
            FitJob(tuple(self.inner_train), config, self.composed.inner.name),
            FitJob(tuple(self.outer_train), config, self.composed.outer.name),
            FitJob(tuple(self.train), config, self.composed.name),
        ]
        inner, outer, reoptimized = fit_many(self.model, jobs, self.template, progress=False)
        return ComposedDeltas(inner.intervention, outer.intervention, reoptimized.intervention)


# How each of COMPOSE_METHODS runs on a cell, in its order.
METHOD_RUNS: dict[str, Method[ComposeCell]] = {
    "0-shot": lambda c: c.score(),
    "Δ inner only": lambda c: c.score(steering=[c.deltas.inner]),
    "Δ outer only": lambda c: c.score(steering=[c.deltas.outer]),
    "Ours (Add)": lambda c: c.score(steering=[c.deltas.outer + c.deltas.inner]),
    "Ours (Re-optimized)": lambda c: c.score(steering=[c.deltas.reoptimized]),
}


def build_compose_table(
    model,
    composed: Sequence[ComposedTask],
    template: Template,
    seeds: Sequence[int],
    config: ComposeConfig = ComposeConfig(),
    out: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (composed task, method, seed); with ``out``, resumable like the comparison table."""
    by_name = {c.name: c for c in composed}
    for c in composed:
        if len(c) < config.min_pairs:
            raise TaskError(
                f"composed task {c.name!r} has {len(c)} pairs; n_train={config.n_train} needs {config.min_pairs}"
            )
    settings = compose_settings(model, composed, template, config)

    def make_cell(name: str, seed: int) -> ComposeCell:
        task = by_name[name]
        train, test = split_task(task.task, n_train=config.n_train, seed=seed, max_test=config.max_test)
        inner_train, outer_train = single_task_train(task, test, config.n_train, seed)
        return ComposeCell(
            model=model,
            task=name,
            seed=seed,
            train=list(train),
            test=list(test),
            config=config,
            template=template,
            composed=task,
            inner_train=inner_train,
            outer_train=outer_train,
        )

    cells = [(c.name, s) for c in composed for s in seeds]
    return run_methods(cells, make_cell, METHOD_RUNS, settings, out, progress, desc="compose")


def compose_settings(model, composed: Sequence[ComposedTask], template: Template, config: ComposeConfig) -> Settings:
    """What the composition rows depend on: each outer and inner task's data (the chains follow from them)."""
    inputs = {task.name: InputHash.of_task(task) for c in composed for task in (c.outer, c.inner)}
    return Settings(
        {"template": template.to_dict(), "config": config.to_dict(), "model": model_settings(model)}, inputs
    )
