"""``headsteer demo``, the README's main job: fit Δ on 10 built-in antonym pairs and show what it changes."""

from __future__ import annotations

import argparse

import pandas as pd

from headsteer.cli.common import load_task_noting_drops, open_model_files
from headsteer.cli.options import (
    DEFAULT_TEMPLATE,
    SPLIT,
    Subcommands,
    add_command,
    add_data_dir_option,
    add_layer_option,
    add_model_options,
    add_steps_option,
    add_task_option,
    add_token_limit_option,
    timed,
)
from headsteer.cli.preflight import check_model_layer, checked_split
from headsteer.config import FitConfig
from headsteer.models import load_from
from headsteer.prompts import Template, get_template
from headsteer.runs import Run, fit_and_score
from headsteer.tasks import Task

SHOWN = 10  # held-out pairs in the before/after table


def add_demo_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "demo",
        "start here: fit Δ on 10 antonym pairs and show what it changes (about 30 s)",
        timed(
            "Fit Δ on 10 built-in antonym pairs with the default model and settings, then print, for\n"
            "held-out words, the answer zero-shot and with Δ, and both accuracies.",
            "about 30 s (the first run also converts the default model once: about 1 min more)",
        ),
        run_demo,
    )
    add_model_options(p)
    add_task_option(p, default="builtin/antonym")
    add_data_dir_option(p)
    add_layer_option(p)
    add_steps_option(p)
    add_token_limit_option(p)


def run_demo(args: argparse.Namespace) -> int:
    config = FitConfig(layer=args.layer, steps=args.steps)
    template = get_template(DEFAULT_TEMPLATE)
    task = load_task_noting_drops(args.task, args.data_dir)
    files = open_model_files(args)
    check_model_layer(files, config.layer)
    checked_split(files, template, task, SPLIT.n_train, config.seed, None)
    show_demo(load_from(files), task, template, config)
    return 0


def show_demo(model, task: Task, template: Template, config: FitConfig, n_train: int = SPLIT.n_train) -> Run:
    """Fit, then print before/after predictions on held-out inputs and the metrics."""
    print(f"model {model.cfg.model_name} | task {task.name} ({len(task)} pairs) | template {template.name!r}")
    print(f"fitting Δ at blocks.{config.layer}.attn.hook_z on {n_train} pairs: {config}")
    run = fit_and_score(model, task, template, config, n_train=n_train, max_test=None)
    print(f"\n{run.result.intervention}\n")
    side_by_side = pd.DataFrame(
        {
            "input": run.zero_shot["input"],
            "target": run.zero_shot["target"],
            "zero-shot": run.zero_shot["prediction"],
            "with Δ": run.fitted["prediction"],
        }
    )
    print(side_by_side.head(SHOWN).to_string(index=False))
    metrics = run.metrics()
    print(f"\nheld-out pairs: {metrics['n_test']}")
    for method in ("zero_shot", "fitted"):
        m = metrics[method]
        print(f"  {method:<10} first-token accuracy {m['first_token']:.3f}   exact match {m['exact_match']:.3f}")
    return run
