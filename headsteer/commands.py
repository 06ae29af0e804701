"""What each ``headsteer`` subcommand does with its parsed arguments (wiring only)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from headsteer.config import FitConfig
from headsteer.demo import run_demo
from headsteer.evaluate import evaluate_pairs, format_mean_std, mean_std, summarize
from headsteer.errors import ArtifactError
from headsteer.experiments import fit_and_score, heldout_pairs, zero_shot_vs_fitted
from headsteer.files import summary_path, write_text_atomic
from headsteer.intervention import Intervention
from headsteer.models import load_model
from headsteer.prompts import Template, get_template
from headsteer.sweep import sweep as run_sweep
from headsteer.tasks import load_task


def _max_test(args: argparse.Namespace) -> int | None:
    return args.max_test or None


def _write_summary(out: str, text: str) -> None:
    """A results table's Markdown summary beside its CSV (OUT.md), and on stdout."""
    write_text_atomic(summary_path(Path(out)), text)
    print(text)


def _config(args: argparse.Namespace, seed: int) -> FitConfig:
    return FitConfig(layer=args.layer, gamma=args.gamma, lam=args.lam, loss=args.loss,
                     optimizer=args.optimizer, steps=args.steps, lr=args.lr, seed=seed)


def fit(args: argparse.Namespace) -> int:
    config = _config(args, args.seed)  # validate before the model loads
    task = load_task(args.task, args.data_dir)
    model = load_model(args.model, args.cache_dir)
    run = fit_and_score(model, task, get_template(args.template), config, args.n_train, _max_test(args), fast=args.fast)
    metrics_path = run.save(args.out)
    print(run.result.intervention)
    for method in ("zero_shot", "fitted"):
        print(f"{method}: {run.metrics()[method]}")
    print(f"wrote {args.out}.safetensors, {args.out}.json, {metrics_path}")
    return 0


def eval(args: argparse.Namespace) -> int:  # noqa: A001 - the subcommand's name
    iv = Intervention.load(args.intervention)
    task = load_task(args.task, args.data_dir)
    try:  # the intervention's record decides the split (not --n-train); its training inputs are never scored
        held = heldout_pairs(task, iv, _max_test(args), args.seed)
    except ArtifactError as err:
        raise ArtifactError(f"--intervention {args.intervention}: {err}") from None
    if held.warning:
        print(f"headsteer eval: warning: {held.warning}", file=sys.stderr)
    template = Template.from_dict(iv.template) if iv.template else get_template(args.template)
    model = load_model(args.model, args.cache_dir)
    iv.check_fits(model)
    test = list(held.pairs)
    scores = evaluate_pairs(model, test, template, [iv])
    baseline = evaluate_pairs(model, test, template, [])
    split = f"split seed {held.split_seed}, n_train {held.n_train}" if held.split_seed is not None else "no split recorded"
    print(f"{iv}\nheld-out pairs: {len(test)} ({split}; {held.excluded} left out as training inputs)")
    print(f"zero_shot: {summarize(baseline)}\nfitted:    {summarize(scores)}")
    if args.out:
        scores.assign(zero_shot_prediction=baseline["prediction"]).to_csv(args.out, index=False)
    return 0


def compare(args: argparse.Namespace) -> int:
    config = _config(args, args.seeds[0])
    task = load_task(args.task, args.data_dir)
    model = load_model(args.model, args.cache_dir)
    results = zero_shot_vs_fitted(model, task, get_template(args.template), config, args.seeds,
                                  args.n_train, _max_test(args), fast=args.fast)
    if args.out:
        results.to_csv(args.out, index=False)
    table = format_mean_std(mean_std(results, by=["task", "layer", "method"]))
    print(table.to_markdown(index=False))
    return 0


def parse_layers(text: str, n_layers: int) -> list[int]:
    """'all', '0,2,4' or '0-8' (inclusive) as a list of layer indices."""
    if text == "all":
        return list(range(n_layers))
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-", 1))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def sweep(args: argparse.Namespace) -> int:
    config = _config(args, 0)
    task = load_task(args.task, args.data_dir)
    model = load_model(args.model, args.cache_dir)
    layers = parse_layers(args.layers, model.cfg.n_layers)
    table = run_sweep(model, task, get_template(args.template), layers, range(args.seeds), config,
                      args.n_train, _max_test(args), args.out, fast=args.fast)
    summary = table.groupby("layer")[["first_token", "exact_match", "zero_shot_first_token"]].agg(["mean", "std"])
    print(summary.round(3).to_markdown())
    print(f"wrote {args.out}")
    return 0


def table(args: argparse.Namespace) -> int:
    from headsteer.runner import summary_markdown
    from headsteer.table import METHODS, TableConfig, build_table

    methods = tuple(args.methods or METHODS)
    config = TableConfig(n_train=args.n_train, max_test=_max_test(args), layer=args.layer,
                         fv_top_k=args.fv_top_k, peft_steps=args.peft_steps, methods=methods)
    tasks = [load_task(name, args.data_dir) for name in args.tasks]
    model = load_model(args.model, args.cache_dir)
    rows = build_table(model, tasks, get_template(args.template), range(args.seeds), config, args.out)
    text = summary_markdown(rows, methods)
    _write_summary(args.out, text)
    return 0


def compose(args: argparse.Namespace) -> int:
    from headsteer.composition import METHODS, PAPER_COMPOSITIONS, ComposeConfig, build_compose_table, compose_tasks
    from headsteer.runner import summary_markdown

    config = ComposeConfig(n_train=args.n_train, max_test=_max_test(args), layer=args.layer)
    composed = [compose_tasks(load_task(outer, args.data_dir), load_task(inner, args.data_dir), config.min_pairs)
                for outer, inner in args.compose or PAPER_COMPOSITIONS]
    for c in composed:
        print(f"{c.name}: {len(c)} chained pairs")
    model = load_model(args.model, args.cache_dir)
    rows = build_compose_table(model, composed, get_template(args.template), range(args.seeds), config, args.out)
    text = summary_markdown(rows, list(METHODS))
    _write_summary(args.out, text)
    return 0


def opinion(args: argparse.Namespace) -> int:
    from headsteer.opinion import METHODS, OpinionConfig, build_opinion_table, with_average
    from headsteer.opinionqa import PAPER_GROUPS, load_group
    from headsteer.runner import summary_markdown

    config = OpinionConfig(n_train=args.n_train, max_test=_max_test(args), layer=args.layer)
    groups = {name: load_group(name, args.data_dir) for name in args.group or PAPER_GROUPS}
    for name, group in groups.items():
        print(f"{name} ({group.attribute}): {len(group)} questions")
    model = load_model(args.model, args.cache_dir)
    rows = build_opinion_table(model, groups, range(args.seeds), config, args.out)
    text = summary_markdown(with_average(rows), list(METHODS), metrics=("kl",))
    _write_summary(args.out, text)
    return 0


def heads(args: argparse.Namespace) -> int:
    from headsteer.head_study import head_study
    from headsteer.heads import DEFAULT_PATH

    config = _config(args, args.seed)
    task = load_task(args.task, args.data_dir)
    model = load_model(args.model, args.cache_dir)
    out = args.out or f"results/heads/{task.name.replace('/', '-')}"
    head_study(model, task, get_template(args.template), config, out, args.n_train, args.strengths or DEFAULT_PATH)
    print(f"wrote {out}/: regularized, unregularized, heads.csv, path.csv, fv_effects.csv")
    return 0


def figures(args: argparse.Namespace) -> int:
    from headsteer.figures import build_figures

    for path in build_figures(args.results, args.out, args.static):
        print(path)
    return 0


def judge(args: argparse.Namespace) -> int:
    import sys

    from headsteer.judge import JudgeConfig, JudgeNotConfigured, judge_predictions, read_predictions
    from headsteer.runner import summary_markdown
    from headsteer.table import METHODS

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
    model = load_model(args.model, args.cache_dir)
    run_demo(model, task=args.task, config=replace(FitConfig(), steps=args.steps))
    return 0

