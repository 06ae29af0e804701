"""``headsteer figures`` and ``judge``: work on saved results, no model. Each command's flags beside its handler."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path

from headsteer.cli.common import write_summary
from headsteer.cli.flags import count
from headsteer.cli.options import Subcommands, add_command
from headsteer.errors import ConfigError
from headsteer.files import check_output_dir
from headsteer.paper.figures import NO_CHROMIUM, build_figures, chromium_found
from headsteer.paper.judge import (
    ENV_BASE_URL,
    ENV_KEY,
    ENV_MODEL,
    JudgeConfig,
    JudgeNotConfigured,
    judge_predictions,
    read_predictions,
)
from headsteer.paper.methods import TABLE_METHODS
from headsteer.paper.summary import summary_markdown

RESULTS_READ = "sweep_*.csv, table.csv, compose.csv, opinion.csv, heads/<task>/"


# ---- figures ------------------------------------------------------------------------------
def add_figures_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "figures",
        "redraw every figure from saved results (HTML + PNG, PDF, SVG)",
        "Redraw every figure the saved results allow, as interactive HTML and, with --static, PNG, PDF and SVG.\n"
        "Reads what sweep, table, compose, opinion and heads wrote; trains nothing, loads no model.",
        run_figures,
    )
    p.add_argument("--results", default="results", metavar="FOLDER", help=f"the folder holding {RESULTS_READ}")
    p.add_argument("--out", default="figures", metavar="FOLDER", help="where the figures are written")
    p.add_argument(
        "--static",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write PNG, PDF and SVG through kaleido, which needs a Chromium (make chromium, or BROWSER_PATH); "
        "default: when one is found, else HTML only with a note",
    )


def run_figures(args: argparse.Namespace) -> int:
    if not Path(args.results).is_dir():
        raise ConfigError(f"--results {args.results}: no such folder (it should hold {RESULTS_READ})")
    check_output_dir(args.out, "--out")
    static = chromium_found() if args.static is None else args.static
    for path in build_figures(args.results, args.out, static):
        print(path)
    if args.static is None and not static:
        print(f"note: {NO_CHROMIUM}", file=sys.stderr)
    return 0


# ---- judge --------------------------------------------------------------------------------
def add_judge_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "judge",
        "GPT-Eval: an LLM judge votes on saved predictions; resumable",
        "Ask an LLM judge (an OpenAI-compatible endpoint) whether each saved prediction is a correct\n"
        f"answer, by majority of --queries votes. Set {ENV_BASE_URL} and {ENV_MODEL}\n"
        f"(and {ENV_KEY} if the endpoint needs a key); without them nothing is scored.",
        run_judge,
    )
    defaults = {f.name: f.default for f in fields(JudgeConfig)}  # JudgeConfig needs an endpoint to be made
    p.add_argument("predictions", help="a predictions CSV, e.g. the OUT.predictions.csv that headsteer table writes")
    p.add_argument(
        "--out", required=True, metavar="OUT", help="votes CSV; rerun the same command to resume (OUT.md: the table)"
    )
    p.add_argument("--queries", type=count, metavar="N", default=defaults["queries"], help="votes asked per prediction")
    p.add_argument(
        "--min-yes",
        type=count,
        metavar="N",
        default=defaults["min_yes"],
        help="yes votes needed to accept a prediction",
    )
    p.add_argument("--workers", type=count, metavar="N", default=defaults["workers"], help="queries in flight at once")


def run_judge(args: argparse.Namespace) -> int:
    try:
        base = JudgeConfig.from_env()
    except JudgeNotConfigured as err:  # a skipped metric, not a failure: say so and write nothing
        print(err, file=sys.stderr)
        return 0
    config = replace(base, queries=args.queries, min_yes=args.min_yes, workers=args.workers)
    judged = judge_predictions(read_predictions(args.predictions), config, args.out)
    per_seed = judged.groupby(["task", "method", "seed"], as_index=False).agg(gpt_eval=("gpt_eval", "mean"))
    found = set(per_seed["method"])
    # the table's order, then any others
    methods = [m for m in TABLE_METHODS if m in found] + sorted(found - set(TABLE_METHODS))
    write_summary(args.out, summary_markdown(per_seed, methods, metrics=("gpt_eval",)))
    return 0
