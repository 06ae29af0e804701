"""The paper's experiments: ``sweep``, ``table``, ``compose``, ``opinion``, ``heads``; flags beside handlers.

Each results file (``--out``) is resumable: rerun the same command and it
continues where it stopped (:mod:`headsteer.paper.results`). As in
:mod:`headsteer.cli.run`, every handler checks all it can before the model's
weights load. The times quoted in the help were measured with the defaults.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd

from headsteer.baselines.prompting import few_shot_template
from headsteer.cli.common import load_model_or_workers, load_task_noting_drops, open_model_files, write_summary
from headsteer.cli.flags import (
    AppendDistinct,
    Distinct,
    LayerSelection,
    count,
    non_negative_int,
    positive_float,
)
from headsteer.cli.options import (
    FIT,
    Subcommands,
    add_command,
    add_data_dir_option,
    add_fit_options,
    add_layer_option,
    add_loss_option,
    add_max_new_tokens_option,
    add_max_test_option,
    add_model_options,
    add_n_train_option,
    add_ray_options,
    add_seeds_option,
    add_task_options,
    add_template_option,
    add_token_limit_option,
    fit_config,
    max_test,
    seeds,
    timed,
)
from headsteer.cli.preflight import (
    check_model_layer,
    check_prompts,
    check_ray,
    check_results_outputs,
    check_task_pairs,
    checked_split,
)
from headsteer.config import OPTION_LOSSES
from headsteer.files import check_output_dir, predictions_path, settings_path, summary_path
from headsteer.heads.maps import MapConfig, map_samples
from headsteer.heads.resample import RESAMPLINGS
from headsteer.paper import composition, opinion, table
from headsteer.paper.head_study import head_study
from headsteer.paper.methods import COMPOSE_METHODS, FEW_SHOT_METHODS, OPINION_METHODS, TABLE_METHODS
from headsteer.paper.opinionqa import DATA_DIR_ENV as OPINIONQA_ENV
from headsteer.paper.opinionqa import PAPER_GROUPS, load_group, split_questions
from headsteer.paper.summary import summary_markdown, with_average, with_run_on
from headsteer.paper.sweep import sweep
from headsteer.prompts import get_template
from headsteer.tasks import TODD_TASKS

PAPER_SEEDS = 5  # the paper's tables and figures average over seeds 0..4


def _out_option(p: argparse.ArgumentParser, table: bool = True) -> None:
    """A results CSV and the files written beside it (as ``check_results_outputs`` checks them)."""
    out = Path("OUT.csv")
    beside = [settings_path(out), *((predictions_path(out), summary_path(out)) if table else ())]
    p.add_argument(
        "--out",
        required=True,
        metavar="OUT.csv",
        help=f"results CSV, with {', '.join(path.name for path in beside)} beside it; rerun the same command to resume",
    )


def add_layers_option(p: argparse.ArgumentParser, what: str = "") -> None:
    """--layers, one parser for every command (argparse parses the string default with it)."""
    p.add_argument("--layers", type=PARSE_LAYERS, default="all", help=f"{what}{LAYERS_HELP}")


PARSE_LAYERS = LayerSelection.parse  # one object: a bound classmethod is a new object at every access
LAYERS_HELP = "'all', a list '0,2,4', a range '0-8', or both '0-3,8'"


# ---- sweep --------------------------------------------------------------------------------
def add_sweep_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "sweep",
        "Δ at every (layer, seed) of one task; resumable (Figure 1; about 9 min per task)",
        timed(
            "Fit and score Δ at every layer of --layers for seeds 0..N-1 (the paper's Figure 1), one\n"
            "row per (layer, seed) in a resumable CSV. Several processes may share one --out\n"
            "(e.g. --layers 0-8 in one, --layers 9-17 in another).",
            "about 9 min per task with the defaults (--layers all --seeds 5; 8 min 39 s for antonym,\n"
            "5 min 4 s with the paper's --loss first_token)",
        ),
        run_sweep,
    )
    add_model_options(p)
    add_task_options(p)
    add_n_train_option(p, "training pairs per seed")
    add_max_test_option(p, "held-out pairs scored per seed")
    add_layers_option(p)
    add_seeds_option(p, default=PAPER_SEEDS)
    add_fit_options(p, layer=False)  # --layers names them
    add_max_new_tokens_option(p)
    add_token_limit_option(p)
    add_ray_options(p)
    _out_option(p, table=False)


def run_sweep(args: argparse.Namespace) -> int:
    check_ray(args)
    config = fit_config(args, seed=0, layer=FIT.layer)  # each cell sets its own layer and seed
    template = get_template(args.template)
    task = load_task_noting_drops(args.task, args.data_dir)
    out = check_results_outputs(args.out)
    files = open_model_files(args)
    layers = args.layers.resolve(files.n_layers)
    include_stop = config.loss == "sequence"
    for seed in seeds(args):
        checked_split(files, template, task, args.n_train, seed, max_test(args), include_stop)
    model = load_model_or_workers(args, files)
    rows = sweep(
        model,
        task,
        template,
        layers,
        seeds(args),
        config,
        args.n_train,
        max_test(args),
        out,
        fast=args.fast,
        max_new_tokens=args.max_new_tokens,
    )
    summary = rows.groupby("layer")[["first_token", "exact_match", "zero_shot_first_token"]].agg(["mean", "std"])
    print(summary.round(3).to_markdown())
    print(f"wrote {out}")
    return 0


# ---- table --------------------------------------------------------------------------------
def add_table_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "table",
        "every method × task on the same splits; resumable (Tables 1, 4, 6; about 8 min per task and seed)",
        timed(
            "Run every method (0-/10-shot, function vectors, ICV, LoRA, IA3, prompt tuning, Δ and its\n"
            "variants) on the same seeded split per (task, seed): the paper's Tables 1, 4 and 6. Rerun\n"
            "the same command to resume; processes given different --tasks may share one --out.",
            "about 8 min per (task, seed) (7 min 25 s for antonym, seed 0); the defaults, 4 tasks × 5 seeds,\n"
            "about 2 h 30 min",
        ),
        run_table,
    )
    defaults = table.TableConfig()
    add_model_options(p)
    p.add_argument("--tasks", nargs="+", action=Distinct, default=list(TODD_TASKS), help="the tasks, by name or file")
    add_data_dir_option(p)
    add_template_option(p)
    add_n_train_option(p, "training pairs (and few-shot demonstrations) per (task, seed)")
    add_max_test_option(p, "held-out pairs scored per (task, seed)")
    add_seeds_option(p, default=PAPER_SEEDS)
    p.add_argument(
        "--methods",
        nargs="+",
        action=Distinct,
        default=list(defaults.methods),
        help="the methods to run, by name; known: " + "; ".join(TABLE_METHODS),
    )
    add_loss_option(p, default=defaults.loss)
    add_max_new_tokens_option(p)
    add_layer_option(p)
    p.add_argument(
        "--fv-top-k", type=count, default=defaults.fv_top_k, metavar="K", help="heads summed into the function vector"
    )
    p.add_argument(
        "--peft-steps",
        type=count,
        default=defaults.peft_steps,
        metavar="STEPS",
        help="training steps of LoRA, IA3 and prompt tuning",
    )
    add_token_limit_option(p)
    add_ray_options(p)
    _out_option(p)


def table_config(args: argparse.Namespace) -> table.TableConfig:
    return table.TableConfig(
        n_train=args.n_train,
        max_test=max_test(args),
        layer=args.layer,
        fv_top_k=args.fv_top_k,
        peft_steps=args.peft_steps,
        methods=tuple(args.methods),
        loss=args.loss,
        max_new_tokens=args.max_new_tokens,
    )


def run_table(args: argparse.Namespace) -> int:
    check_ray(args)
    config = table_config(args)
    template = get_template(args.template)
    tasks = [load_task_noting_drops(name, args.data_dir) for name in args.tasks]
    out = check_results_outputs(args.out, predictions=True, summary=True)
    files = open_model_files(args)
    check_model_layer(files, config.layer)
    few_shot = any(m in FEW_SHOT_METHODS for m in config.methods)
    for task in tasks:
        for seed in seeds(args):
            train, test = checked_split(files, template, task, config.n_train, seed, config.max_test)
            if few_shot:  # the k-shot prompts hold every training pair: the longest prompts the table scores
                check_prompts(task.name, files.tokenizer, few_shot_template(template, train), [p.input for p in test])
    model = load_model_or_workers(args, files)
    rows = table.build_table(model, tasks, template, seeds(args), config, out)
    predictions = pd.read_csv(predictions_path(out), keep_default_na=False)
    metrics = ("exact_match", "first_token", "run_on")
    write_summary(args.out, summary_markdown(with_run_on(rows, predictions), config.methods, metrics))
    return 0


# ---- compose ------------------------------------------------------------------------------
def add_compose_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "compose",
        "task composition outer∘inner: Δ_outer + Δ_inner; resumable (Table 2; about 21 min)",
        timed(
            "Compose two tasks (e.g. english-french∘antonym: 'hot' -> 'froid') and compare the sum of\n"
            "the single-task Δ's with a Δ fitted on the composed pairs: the paper's Table 2.",
            "about 21 min with the defaults (the paper's four compositions, --seeds 5), measured with\n"
            "--loss first_token; the default sequence loss's steps cost up to 1.6x",
        ),
        run_compose,
    )
    paper = "; ".join("∘".join(pair) for pair in composition.PAPER_COMPOSITIONS)
    add_model_options(p)
    p.add_argument(
        "--compose",
        nargs=2,
        action=AppendDistinct,
        metavar=("OUTER", "INNER"),
        help=f"one composed task, e.g. --compose english-french antonym; repeatable (default: the paper's: {paper})",
    )
    add_data_dir_option(p)
    add_template_option(p)
    add_n_train_option(p, "training pairs of each Δ per (task, seed)")
    add_max_test_option(p, "held-out composed pairs scored per (task, seed)")
    add_seeds_option(p, default=PAPER_SEEDS)
    add_layer_option(p)
    add_loss_option(p)
    add_max_new_tokens_option(p)
    add_token_limit_option(p)
    add_ray_options(p)
    _out_option(p)


def run_compose(args: argparse.Namespace) -> int:
    check_ray(args)
    config = composition.ComposeConfig(
        n_train=args.n_train,
        max_test=max_test(args),
        layer=args.layer,
        loss=args.loss,
        max_new_tokens=args.max_new_tokens,
    )
    template = get_template(args.template)
    pairs = args.compose or composition.PAPER_COMPOSITIONS
    names = dict.fromkeys(name for pair in pairs for name in pair)
    tasks = {name: load_task_noting_drops(name, args.data_dir) for name in names}
    composed = [composition.compose_tasks(tasks[outer], tasks[inner], config.min_pairs) for outer, inner in pairs]
    out = check_results_outputs(args.out, predictions=True, summary=True)
    files = open_model_files(args)
    check_model_layer(files, config.layer)
    for c in composed:
        print(f"{c.name}: {len(c)} chained pairs")
        for seed in seeds(args):
            _, test = checked_split(files, template, c.task, config.n_train, seed, config.max_test)
            for task, train in zip((c.inner, c.outer), composition.single_task_train(c, test, config.n_train, seed)):
                check_task_pairs(task.name, files.tokenizer, template, train)
    model = load_model_or_workers(args, files)
    rows = composition.build_compose_table(model, composed, template, seeds(args), config, out)
    write_summary(args.out, summary_markdown(rows, list(COMPOSE_METHODS)))
    return 0


# ---- opinion ------------------------------------------------------------------------------
def add_opinion_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "opinion",
        "steer answers toward a group's OpinionQA answers; resumable (Table 3; about 49 min)",
        timed(
            "Fit Δ on a group's answer distributions for --n-train survey questions (loss option_kl)\n"
            "and compare it with persona and few-shot prompts by KL on held-out questions: the\n"
            "paper's Table 3.",
            "about 49 min with the defaults (the paper's four groups, --seeds 5)",
        ),
        run_opinion,
    )
    add_model_options(p)
    p.add_argument(
        "--group",
        action=AppendDistinct,
        help="a group by name, e.g. 'Northeast' or 'INCOME:Refused'; repeatable "
        f"(default: the paper's: {'; '.join(PAPER_GROUPS)})",
    )
    p.add_argument(
        "--data-dir", help=f"the OpinionQA folder (default: ${OPINIONQA_ENV}, else shared/datasets/opinionqa)"
    )
    add_n_train_option(p, "training questions per (group, seed)")
    add_max_test_option(p, "held-out questions scored per (group, seed)")
    add_seeds_option(p, default=PAPER_SEEDS)
    add_layer_option(p)
    p.add_argument(
        "--loss",
        choices=OPTION_LOSSES,
        default=opinion.OpinionConfig().loss,
        help="Δ's loss: option_kl_reverse, KL(model ‖ group), the paper's; option_kl, KL(group ‖ model)",
    )
    add_ray_options(p)
    _out_option(p)


def run_opinion(args: argparse.Namespace) -> int:
    check_ray(args)
    config = opinion.OpinionConfig(n_train=args.n_train, max_test=max_test(args), layer=args.layer, loss=args.loss)
    groups = {name: load_group(name, args.data_dir) for name in args.group or PAPER_GROUPS}
    out = check_results_outputs(args.out, predictions=True, summary=True)
    files = open_model_files(args)
    check_model_layer(files, config.layer)
    for name, group in groups.items():
        print(f"{name} ({group.attribute}): {len(group)} questions")
        for seed in seeds(args):
            train, test = split_questions(group, config.n_train, seed, config.max_test)
            for question in train + test:
                opinion.question_block(question)  # at most as many options as letters
            opinion.option_targets(files.tokenizer, train + test)  # each option letter is one token
    model = load_model_or_workers(args, files)
    rows = opinion.build_opinion_table(model, groups, seeds(args), config, out)
    write_summary(
        args.out, summary_markdown(with_average(rows), list(OPINION_METHODS), metrics=opinion.OPINION_METRICS)
    )
    return 0


# ---- heads --------------------------------------------------------------------------------
MAP = MapConfig()  # every head-map flag's default


def add_heads_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "heads",
        "which heads a task uses, model-wide and how stably: the head map (about 10 min per task and seed)",
        timed(
            "Map which heads Δ uses at every layer of --layers, on each seed's training pairs: ‖Δ_h‖ at the\n"
            "chosen γ = λ; the λ path by warm-started continuation (where each head switches on); stability\n"
            "selection over --resamples resamples of the training pairs; each head's causal share on the\n"
            "held-out pairs (Δ without it, it alone); the function vector's indirect effect of every head.\n"
            "Writes the tables behind the head figures (headsteer figures) to --out.",
            "about 10 min per task and seed with the defaults (--layers all --resamples 10; 9 min 38 s for\n"
            "antonym, the λ path 6 min of it; 6.7 min for synonym with --loss first_token)",
        ),
        run_heads,
    )
    add_model_options(p)
    add_task_options(p)
    add_n_train_option(p, "training pairs per seed (fitted on and resampled)")
    add_max_test_option(p, "held-out pairs scored per seed (causal shares and per-layer accuracy)")
    add_seeds_option(p, default=1)
    add_layers_option(p, "the layers mapped: ")
    add_fit_options(p, layer=False, fast=False)  # every fit here is prefix-cached
    p.add_argument(
        "--resamples", type=count, default=MAP.resamples, metavar="B", help="resamples of the training pairs"
    )
    p.add_argument(
        "--resampling",
        choices=RESAMPLINGS,
        default=MAP.resampling,
        help="halves: complementary halves (Shah & Samworth; B/2 splits); bootstrap: N draws with replacement",
    )
    p.add_argument(
        "--threshold",
        type=positive_float,
        default=MAP.threshold,
        help="π_thr: the selection frequency (in (0.5, 1]) a stable head reaches",
    )
    p.add_argument(
        "--expected-false",
        type=positive_float,
        default=MAP.expected_false,
        metavar="E_V",
        help="bound on the expected number of falsely stable heads; sets how many heads the region may select",
    )
    p.add_argument(
        "--path-points",
        type=count,
        default=MAP.path_points,
        metavar="K",
        help="strengths on the λ path above the chosen one, log-spaced from the largest entry strength",
    )
    p.add_argument(
        "--strengths",
        type=positive_float,
        nargs="+",
        action=Distinct,
        help="an explicit λ path instead (falling, above --gamma; the chosen strength is appended)",
    )
    p.add_argument("--path-steps", type=count, default=MAP.path_steps, help="steps per warm-started path segment")
    p.add_argument("--path-lr", type=positive_float, default=MAP.path_lr, help="step size of the path segments")
    p.add_argument(
        "--fv-top-k", type=count, default=MAP.fv_top_k, metavar="K", help="the function vector's top heads compared"
    )
    p.add_argument(
        "--resample-fv",
        action=argparse.BooleanOptionalAction,
        default=MAP.resample_fv,
        help="also rank heads by the function vector on every resample (the spread of the overlap)",
    )
    p.add_argument(
        "--unregularized-layer",
        type=non_negative_int,
        default=MAP.unregularized_layer,
        metavar="LAYER",
        help="also fit Δ without penalty at this layer when mapped (Figure 2 sets the two side by side)",
    )
    add_token_limit_option(p)
    add_ray_options(p)
    p.add_argument("--out", metavar="FOLDER", help="output folder (default: results/heads/<task>)")


def map_config(args: argparse.Namespace, layers: list[int]) -> MapConfig:
    return MapConfig(
        fit=fit_config(args, seed=0, layer=FIT.layer),  # each seed sets its own; the layers are below
        layers=tuple(layers),
        resamples=args.resamples,
        resampling=args.resampling,
        threshold=args.threshold,
        expected_false=args.expected_false,
        path_points=args.path_points,
        strengths=tuple(args.strengths) if args.strengths else None,
        path_steps=args.path_steps,
        path_lr=args.path_lr,
        fv_top_k=args.fv_top_k,
        resample_fv=args.resample_fv,
        unregularized_layer=args.unregularized_layer,
    )


def run_heads(args: argparse.Namespace) -> int:
    check_ray(args)
    template = get_template(args.template)
    task = load_task_noting_drops(args.task, args.data_dir)
    out = check_output_dir(args.out or f"results/heads/{task.name.replace('/', '-')}")
    files = open_model_files(args)
    config = map_config(args, args.layers.resolve(files.n_layers))  # refuses a bad γ, λ, threshold... by name
    include_stop = config.fit.loss == "sequence"
    for seed in seeds(args):  # the fits read the training pairs, the ablations the held-out ones
        train, _ = checked_split(files, template, task, args.n_train, seed, max_test(args), include_stop)
        check_prompts(task.name, files.tokenizer, few_shot_template(template, train), [p.input for p in train])
        map_samples(train, replace(config, fit=replace(config.fit, seed=seed)))  # refuses too few pairs per resample
    model = load_model_or_workers(args, files)
    maps = head_study(model, task, template, config, out, seeds(args), args.n_train, max_test(args))
    for found in maps:
        print(found.summary().to_markdown(index=False))
    print(
        f"wrote {out}/: heads.csv, layers.csv, path.csv, entry.csv, fv_effects.csv, fv_overlap.csv, "
        "stability.json, interventions/"
    )
    return 0
