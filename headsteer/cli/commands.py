"""What each ``headsteer`` subcommand does with its parsed arguments (wiring only).

Each command first checks everything it can before the model's weights load
(:mod:`headsteer.cli.preflight`): its configs, tasks and output locations, then
the model's config and tokenizer against layer indices and every pair the run
will use. Only then does it load the weights and work.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from headsteer.cli.demo import run_demo
from headsteer.cli.preflight import (
    check_fast_forward,
    check_intervention_model,
    check_model_layer,
    check_prompts,
    check_results_outputs,
    check_task_pairs,
    checked_split,
)
from headsteer.config import FitConfig
from headsteer.errors import ArtifactError, ConfigError
from headsteer.evaluate import evaluate_pairs, format_mean_std, mean_std, summarize
from headsteer.files import check_output_dir, check_output_file, summary_path, write_csv_atomic, write_text_atomic
from headsteer.intervention import Intervention, check_artifact_output
from headsteer.models import ModelFiles, load_from, open_model
from headsteer.paper.sweep import sweep as run_sweep
from headsteer.prompts import Template, get_template
from headsteer.runs import fit_and_score, heldout_pairs, zero_shot_vs_fitted
from headsteer.tasks import Task, load_task, split_task

DEMO_TEMPLATE, DEMO_N_TRAIN = "qa", 10


def _max_test(args: argparse.Namespace) -> int | None:
    return args.max_test or None  # --max-test 0: every held-out pair


def _task(name: str, data_dir: str | None) -> Task:
    """Load a task, saying on stderr how many repeated inputs were dropped."""
    task = load_task(name, data_dir)
    if task.dropped_duplicates:
        print(
            f"task {task.name!r}: dropped {task.dropped_duplicates} pairs whose input repeats an earlier "
            f"pair's (the first is kept); {len(task)} pairs remain",
            file=sys.stderr,
        )
    return task


def _open(args: argparse.Namespace) -> ModelFiles:
    return open_model(args.model, args.cache_dir)


def _write_summary(out: str, text: str) -> None:
    """A results table's Markdown summary beside its CSV (OUT.md), and on stdout."""
    write_text_atomic(summary_path(Path(out)), text)
    print(text)


def _config(args: argparse.Namespace, seed: int) -> FitConfig:
    return FitConfig(
        layer=args.layer,
        gamma=args.gamma,
        lam=args.lam,
        loss=args.loss,
        optimizer=args.optimizer,
        steps=args.steps,
        lr=args.lr,
        seed=seed,
    )


def _check_fit_model(files: ModelFiles, layer: int, fast: bool, flag: str = "--layer") -> None:
    """Δ's layer exists, and the model suits the prefix-cached fitter where it is used."""
    check_model_layer(files, layer, flag)
    if fast:
        check_fast_forward(files)


def fit(args: argparse.Namespace) -> int:
    config = _config(args, args.seed)
    template = get_template(args.template)
    task = _task(args.task, args.data_dir)
    paths = check_artifact_output(args.out)
    files = _open(args)
    _check_fit_model(files, config.layer, args.fast)
    checked_split(
        files, template, task, args.n_train, config.seed, _max_test(args), include_stop=config.loss == "sequence"
    )
    model = load_from(files)
    run = fit_and_score(model, task, template, config, args.n_train, _max_test(args), fast=args.fast)
    run.save(paths.stem)
    print(run.result.intervention)
    for method in ("zero_shot", "fitted"):
        print(f"{method}: {run.metrics()[method]}")
    print(f"wrote {paths.tensors}, {paths.meta}, {paths.metrics}, {paths.history}")
    return 0


def eval(args: argparse.Namespace) -> int:
    iv = Intervention.load(args.intervention)
    task = _task(args.task, args.data_dir)
    out = check_output_file(args.out) if args.out else None
    try:  # the intervention's record decides the split (not --n-train); its training inputs are never scored
        held = heldout_pairs(task, iv, _max_test(args), args.seed)
    except ArtifactError as err:
        raise ArtifactError(f"--intervention {args.intervention}: {err}") from None
    if held.warning:
        print(f"headsteer eval: warning: {held.warning}", file=sys.stderr)
    template = Template.from_dict(iv.template) if iv.template else get_template(args.template)
    test = list(held.pairs)
    files = _open(args)
    check_intervention_model(iv, files)
    check_task_pairs(task.name, files.tokenizer, template, test)
    model = load_from(files)
    iv.check_fits(model)
    scores = evaluate_pairs(model, test, template, [iv])
    baseline = evaluate_pairs(model, test, template, [])
    split = (
        f"split seed {held.split_seed}, n_train {held.n_train}" if held.split_seed is not None else "no split recorded"
    )
    print(f"{iv}\nheld-out pairs: {len(test)} ({split}; {held.excluded} left out as training inputs)")
    print(f"zero_shot: {summarize(baseline)}\nfitted:    {summarize(scores)}")
    if out:
        write_csv_atomic(out, scores.assign(zero_shot_prediction=baseline["prediction"]))
    return 0


def compare(args: argparse.Namespace) -> int:
    config = _config(args, args.seeds[0])
    template = get_template(args.template)
    task = _task(args.task, args.data_dir)
    out = check_output_file(args.out) if args.out else None
    files = _open(args)
    _check_fit_model(files, config.layer, args.fast)
    for seed in args.seeds:
        checked_split(
            files, template, task, args.n_train, seed, _max_test(args), include_stop=config.loss == "sequence"
        )
    model = load_from(files)
    results = zero_shot_vs_fitted(
        model, task, template, config, args.seeds, args.n_train, _max_test(args), fast=args.fast
    )
    if out:
        write_csv_atomic(out, results)
    table = format_mean_std(mean_std(results, by=["task", "layer", "method"]))
    print(table.to_markdown(index=False))
    return 0


def sweep(args: argparse.Namespace) -> int:
    config = _config(args, 0)
    template = get_template(args.template)
    task = _task(args.task, args.data_dir)
    out = check_results_outputs(args.out)
    files = _open(args)
    layers = args.layers.resolve(files.n_layers)
    if args.fast:
        check_fast_forward(files)
    for seed in range(args.seeds):
        checked_split(
            files, template, task, args.n_train, seed, _max_test(args), include_stop=config.loss == "sequence"
        )
    model = load_from(files)
    table = run_sweep(
        model, task, template, layers, range(args.seeds), config, args.n_train, _max_test(args), out, fast=args.fast
    )
    summary = table.groupby("layer")[["first_token", "exact_match", "zero_shot_first_token"]].agg(["mean", "std"])
    print(summary.round(3).to_markdown())
    print(f"wrote {out}")
    return 0


def table(args: argparse.Namespace) -> int:
    from headsteer.baselines.prompting import few_shot_template
    from headsteer.paper.runner import summary_markdown
    from headsteer.paper.table import FEW_SHOT_METHODS, METHODS, TableConfig, build_table

    methods = tuple(args.methods or METHODS)
    config = TableConfig(
        n_train=args.n_train,
        max_test=_max_test(args),
        layer=args.layer,
        fv_top_k=args.fv_top_k,
        peft_steps=args.peft_steps,
        methods=methods,
    )
    template = get_template(args.template)
    tasks = [_task(name, args.data_dir) for name in args.tasks]
    out = check_results_outputs(args.out, predictions=True, summary=True)
    files = _open(args)
    _check_fit_model(files, config.layer, fast=True)
    few_shot = any(m in FEW_SHOT_METHODS for m in methods)
    for task in tasks:
        for seed in range(args.seeds):
            train, test = checked_split(files, template, task, config.n_train, seed, config.max_test)
            if few_shot:  # the k-shot prompts hold every training pair: the longest prompts the table scores
                check_prompts(task.name, files.tokenizer, few_shot_template(template, train), [p.input for p in test])
    model = load_from(files)
    rows = build_table(model, tasks, template, range(args.seeds), config, out)
    text = summary_markdown(rows, methods)
    _write_summary(args.out, text)
    return 0


def compose(args: argparse.Namespace) -> int:
    from headsteer.paper.composition import (
        METHODS,
        PAPER_COMPOSITIONS,
        ComposeConfig,
        build_compose_table,
        compose_tasks,
        single_task_train,
    )
    from headsteer.paper.runner import summary_markdown

    config = ComposeConfig(n_train=args.n_train, max_test=_max_test(args), layer=args.layer)
    template = get_template(args.template)
    pairs = args.compose or PAPER_COMPOSITIONS
    tasks = {name: _task(name, args.data_dir) for name in dict.fromkeys(n for pair in pairs for n in pair)}
    composed = [compose_tasks(tasks[outer], tasks[inner], config.min_pairs) for outer, inner in pairs]
    out = check_results_outputs(args.out, predictions=True, summary=True)
    files = _open(args)
    _check_fit_model(files, config.layer, fast=True)
    for c in composed:
        print(f"{c.name}: {len(c)} chained pairs")
        for seed in range(args.seeds):
            _, test = checked_split(files, template, c.task, config.n_train, seed, config.max_test)
            for task, train in zip((c.inner, c.outer), single_task_train(c, test, config.n_train, seed)):
                check_task_pairs(task.name, files.tokenizer, template, train)
    model = load_from(files)
    rows = build_compose_table(model, composed, template, range(args.seeds), config, out)
    text = summary_markdown(rows, list(METHODS))
    _write_summary(args.out, text)
    return 0


def opinion(args: argparse.Namespace) -> int:
    from headsteer.paper.opinion import (
        METHODS,
        OpinionConfig,
        build_opinion_table,
        option_targets,
        question_block,
        with_average,
    )
    from headsteer.paper.opinionqa import PAPER_GROUPS, load_group, split_questions
    from headsteer.paper.runner import summary_markdown

    config = OpinionConfig(n_train=args.n_train, max_test=_max_test(args), layer=args.layer)
    groups = {name: load_group(name, args.data_dir) for name in args.group or PAPER_GROUPS}
    out = check_results_outputs(args.out, predictions=True, summary=True)
    files = _open(args)
    _check_fit_model(files, config.layer, fast=True)
    for name, group in groups.items():
        print(f"{name} ({group.attribute}): {len(group)} questions")
        for seed in range(args.seeds):
            train, test = split_questions(group, config.n_train, seed, config.max_test)
            for question in train + test:
                question_block(question)  # at most as many options as letters
            option_targets(files.tokenizer, train + test)  # each option letter is one token
    model = load_from(files)
    rows = build_opinion_table(model, groups, range(args.seeds), config, out)
    text = summary_markdown(with_average(rows), list(METHODS), metrics=("kl",))
    _write_summary(args.out, text)
    return 0


def heads(args: argparse.Namespace) -> int:
    from headsteer.heads import DEFAULT_PATH
    from headsteer.paper.head_study import head_study

    config = _config(args, args.seed)
    template = get_template(args.template)
    task = _task(args.task, args.data_dir)
    out = check_output_dir(args.out or f"results/heads/{task.name.replace('/', '-')}", "--out")
    files = _open(args)
    _check_fit_model(files, config.layer, fast=True)
    train, _ = split_task(task, n_train=args.n_train, seed=config.seed)  # the study fits on the training pairs only
    check_task_pairs(task.name, files.tokenizer, template, train, include_stop=config.loss == "sequence")
    model = load_from(files)
    head_study(model, task, template, config, out, args.n_train, args.strengths or DEFAULT_PATH)
    print(f"wrote {out}/: regularized, unregularized, heads.csv, path.csv, fv_effects.csv")
    return 0


def figures(args: argparse.Namespace) -> int:
    from headsteer.paper.figures import build_figures

    if not Path(args.results).is_dir():
        raise ConfigError(
            f"--results {args.results}: no such folder (it should hold sweep_*.csv, table.csv, heads/<task>/)"
        )
    check_output_dir(args.out, "--out")
    for path in build_figures(args.results, args.out, args.static):
        print(path)
    return 0


def judge(args: argparse.Namespace) -> int:
    import sys

    from headsteer.paper.judge import JudgeConfig, JudgeNotConfigured, judge_predictions, read_predictions
    from headsteer.paper.runner import summary_markdown
    from headsteer.paper.table import METHODS

    try:
        base = JudgeConfig.from_env()
    except JudgeNotConfigured as err:  # a skipped metric, not a failure: say so and write nothing
        print(err, file=sys.stderr)
        return 0
    config = replace(base, queries=args.queries, min_yes=args.min_yes, workers=args.workers)
    judged = judge_predictions(read_predictions(args.predictions), config, args.out)
    per_seed = judged.groupby(["task", "method", "seed"], as_index=False)["gpt_eval"].mean()
    methods = [m for m in METHODS if m in set(per_seed["method"])] + sorted(set(per_seed["method"]) - set(METHODS))
    text = summary_markdown(per_seed, methods, metrics=("gpt_eval",))
    _write_summary(args.out, text)
    return 0


def demo(args: argparse.Namespace) -> int:
    config = replace(FitConfig(), steps=args.steps)
    template = get_template(DEMO_TEMPLATE)
    task = _task(args.task, None)
    files = _open(args)
    _check_fit_model(files, config.layer, fast=True, flag="the demo's layer")
    checked_split(files, template, task, DEMO_N_TRAIN, config.seed, None)
    model = load_from(files)
    run_demo(model, task=args.task, template=DEMO_TEMPLATE, config=config, n_train=DEMO_N_TRAIN)
    return 0
