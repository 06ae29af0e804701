"""``headsteer fit``, ``eval`` and ``compare``: one task at one layer. Each command's flags sit beside its handler.

Every handler first checks all it can before the model's weights load
(:mod:`headsteer.cli.preflight`): its flags, task and output locations, then
the model's config and tokenizer against the layer and every pair the run will
use. Only then does it load the weights and work.
"""

from __future__ import annotations

import argparse
import sys

from headsteer.cli.common import load_task_noting_drops, open_model_files
from headsteer.cli.options import (
    FIT,
    Subcommands,
    add_command,
    add_data_dir_option,
    add_fit_options,
    add_max_new_tokens_option,
    add_max_test_option,
    add_model_options,
    add_n_train_option,
    add_seeds_option,
    add_task_option,
    add_task_options,
    add_template_option,
    add_token_limit_option,
    fit_config,
    max_test,
    seeds,
    timed,
)
from headsteer.cli.preflight import (
    check_intervention_model,
    check_model_layer,
    check_new_output_file,
    check_task_pairs,
    checked_split,
)
from headsteer.errors import ArtifactError
from headsteer.evaluate import evaluate_pairs, format_mean_std, mean_std, summarize
from headsteer.files import ArtifactPaths, check_output_file, write_csv_atomic
from headsteer.intervention import Intervention, check_artifact_output
from headsteer.models import load_from
from headsteer.paper.compare import zero_shot_vs_fitted
from headsteer.prompts import Template, get_template
from headsteer.runs import fit_and_score, heldout_pairs

COMPARE_SEEDS = 3  # seeds 0, 1, 2: the README's comparison


# ---- fit ----------------------------------------------------------------------------------
def add_fit_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "fit",
        "fit Δ on a task's training pairs; save it and its held-out scores",
        "Fit Δ at one layer on --n-train pairs of a task (a seeded split), score zero-shot and with Δ\n"
        "on the held-out pairs, and save the intervention. Score it again later with headsteer eval.",
        run_fit,
    )
    add_model_options(p)
    add_task_options(p)
    add_n_train_option(p)
    add_max_test_option(p)
    add_max_new_tokens_option(p)
    p.add_argument("--seed", type=int, default=FIT.seed, help="seeds the split and the fit")
    add_fit_options(p)
    add_token_limit_option(p)
    written = ", ".join(path.name for path in ArtifactPaths.of("OUT").all)
    p.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help=f"path stem of the 4 files written: {written} (Δ, its record, the held-out scores, the loss per step)",
    )


def run_fit(args: argparse.Namespace) -> int:
    config = fit_config(args, args.seed)
    template = get_template(args.template)
    task = load_task_noting_drops(args.task, args.data_dir)
    paths = check_artifact_output(args.out)
    files = open_model_files(args)
    check_model_layer(files, config.layer)
    include_stop = config.loss == "sequence"
    checked_split(files, template, task, args.n_train, config.seed, max_test(args), include_stop)
    model = load_from(files)
    run = fit_and_score(
        model,
        task,
        template,
        config,
        args.n_train,
        max_test(args),
        fast=args.fast,
        max_new_tokens=args.max_new_tokens,
    )
    run.save(paths.stem)
    print(run.result.intervention)
    for method in ("zero_shot", "fitted"):
        print(f"{method}: {run.metrics()[method]}")
    print(f"wrote {', '.join(str(path) for path in paths.all)}")
    return 0


# ---- eval ---------------------------------------------------------------------------------
def add_eval_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "eval",
        "score a saved intervention on the held-out pairs of its own split",
        "Score a saved intervention, zero-shot and with Δ, on held-out pairs of a task. The split is the\n"
        "one its training record names (seed and n_train), redone on the task's data; every pair whose\n"
        "input Δ was trained on is left out, whatever the data file.",
        run_eval,
    )
    add_model_options(p)
    p.add_argument(
        "--intervention", required=True, metavar="STEM", help="path stem of a saved intervention (fit's --out)"
    )
    add_task_option(p)
    add_data_dir_option(p)
    add_template_option(p, note="; used only if the intervention records none")
    add_max_test_option(p)
    add_max_new_tokens_option(p)
    p.add_argument(
        "--seed",
        type=int,
        help="redo the split with this seed instead (default: the intervention's); its training inputs stay out",
    )
    add_token_limit_option(p)
    p.add_argument("--out", help="also write the per-pair scores and predictions to this CSV")


def run_eval(args: argparse.Namespace) -> int:
    iv = Intervention.load(args.intervention)
    task = load_task_noting_drops(args.task, args.data_dir)
    out = check_output_file(args.out) if args.out else None
    try:  # the intervention's record decides the split; its training inputs are never scored
        held = heldout_pairs(task, iv, max_test(args), args.seed)
    except ArtifactError as err:
        raise ArtifactError(f"--intervention {args.intervention}: {err}") from None
    if held.warning:
        print(f"headsteer eval: warning: {held.warning}", file=sys.stderr)
    template = Template.from_dict(iv.template) if iv.template else get_template(args.template)
    test = list(held.pairs)
    files = open_model_files(args)
    check_intervention_model(iv, files)
    check_task_pairs(task.name, files.tokenizer, template, test)
    model = load_from(files)
    iv.check_fits(model)
    scores = evaluate_pairs(model, test, template, [iv], max_new_tokens=args.max_new_tokens)
    baseline = evaluate_pairs(model, test, template, [], max_new_tokens=args.max_new_tokens)
    split = (
        f"split seed {held.split_seed}, n_train {held.n_train}" if held.split_seed is not None else "no split recorded"
    )
    print(f"{iv}\nheld-out pairs: {len(test)} ({split}; {held.excluded} left out as training inputs)")
    print(f"zero_shot: {summarize(baseline)}\nfitted:    {summarize(scores)}")
    if out:
        write_csv_atomic(out, scores.assign(zero_shot_prediction=baseline["prediction"]))
    return 0


# ---- compare ------------------------------------------------------------------------------
def add_compare_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "compare",
        "zero-shot vs Δ over several seeds, mean ± std (about 1 min per seed)",
        timed(
            "Fit and score Δ for seeds 0..N-1 (each its own split) and print zero-shot and Δ's\n"
            "scores as mean ± std over the seeds.",
            "about 1 min per seed",
        ),
        run_compare,
    )
    add_model_options(p)
    add_task_options(p)
    add_n_train_option(p, "training pairs per seed")
    add_max_test_option(p, "held-out pairs scored per seed")
    add_max_new_tokens_option(p)
    add_seeds_option(p, default=COMPARE_SEEDS)
    add_fit_options(p)
    add_token_limit_option(p)
    p.add_argument(
        "--out", help="also write the per-seed scores to this CSV; it must not exist yet (results are never replaced)"
    )


def run_compare(args: argparse.Namespace) -> int:
    config = fit_config(args, seed=0)
    template = get_template(args.template)
    task = load_task_noting_drops(args.task, args.data_dir)
    out = check_new_output_file(args.out) if args.out else None
    files = open_model_files(args)
    check_model_layer(files, config.layer)
    include_stop = config.loss == "sequence"
    for seed in seeds(args):
        checked_split(files, template, task, args.n_train, seed, max_test(args), include_stop)
    model = load_from(files)
    results = zero_shot_vs_fitted(
        model,
        task,
        template,
        config,
        seeds(args),
        args.n_train,
        max_test(args),
        fast=args.fast,
        max_new_tokens=args.max_new_tokens,
    )
    if out:
        write_csv_atomic(out, results)
    table = format_mean_std(mean_std(results, by=["task", "layer", "method"]))
    print(table.to_markdown(index=False))
    return 0
