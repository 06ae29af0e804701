"""What several handlers do besides the work: load a task (saying what was dropped), open the model, write a summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headsteer.cli.options import ray_config
from headsteer.files import summary_path, write_text_atomic
from headsteer.models import ModelFiles, Placement, load_from, open_model
from headsteer.paper.workers import ModelOrWorkers, ModelSource, RayWorkers
from headsteer.tasks import Task, load_task


def load_task_noting_drops(name: str, data_dir: str | None) -> Task:
    """Load a task, saying on stderr how many repeated inputs were dropped."""
    task = load_task(name, data_dir)
    if task.dropped_duplicates:
        print(
            f"task {task.name!r}: dropped {task.dropped_duplicates} pairs whose input repeats an earlier "
            f"pair's (the first is kept); {len(task)} pairs remain",
            file=sys.stderr,
        )
    return task


def open_model_files(args: argparse.Namespace) -> ModelFiles:
    """The model's config and tokenizer (``--model``, ``--cache-dir``): enough for the checks, no weights.

    ``--dtype`` and ``--device`` are checked first (a CUDA device this machine lacks is refused here).
    """
    auto = args.device == "auto"
    placement = Placement(None if auto else args.device, args.dtype, "auto" if auto else None)
    return open_model(args.model, args.cache_dir, placement)


def load_model_or_workers(args: argparse.Namespace, files: ModelFiles) -> ModelOrWorkers:
    """The model's weights loaded here, or with ``--ray`` the Ray workers that each load them once."""
    config = ray_config(args)
    if config is None:
        return load_from(files)
    return RayWorkers(ModelSource(args.model, args.cache_dir, args.dtype), config)


def write_summary(out: str, text: str) -> None:
    """A results table's Markdown summary beside its CSV (OUT.md), and on stdout."""
    write_text_atomic(summary_path(Path(out)), text)
    print(text)
