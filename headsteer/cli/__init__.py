"""``headsteer`` command line: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from headsteer.cli.flags import (
    AppendDistinct,
    Distinct,
    LayerSelection,
    count,
    non_negative_float,
    non_negative_int,
    positive_float,
)
from headsteer.config import DEFAULT_LR, OPTIMIZERS, PAIR_LOSSES, FitConfig
from headsteer.errors import ConfigError, HeadsteerError
from headsteer.prompts import DEFAULT_MAX_TOKENS, TEMPLATES


class CommandLineError(ConfigError):
    """argparse refused the command line; ``prog`` is the (sub)command it belongs to."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """Raises on a usage error instead of printing the usage and exiting: ``main`` prints one line."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(self.prog, f"{message} (see {self.prog} --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; an unknown flag is blamed on the subcommand it was given to."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        prog = f"{parser.prog} {args.command}"
        raise CommandLineError(prog, f"unrecognized arguments: {' '.join(unknown)} (see {prog} --help)")
    return args


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="Hugging Face name or local directory (default: Gemma 3 270M, offline)"
    )
    p.add_argument(
        "--cache-dir", default=None, help="where the converted default model is cached ($HEADSTEER_CACHE_DIR)"
    )


def _add_template_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--template",
        default="qa",
        choices=sorted(TEMPLATES),
        help="prompt template: qa ('Q: x\\nA:' -> ' y') or colon ('x:' -> 'y')",
    )


def _add_token_limit_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-tokens",
        type=count,
        default=DEFAULT_MAX_TOKENS,
        help=f"refuse a pair whose prompt + answer (or few-shot prompt) exceeds N tokens (default {DEFAULT_MAX_TOKENS})",  # noqa: E501
    )


def _add_task_args(p: argparse.ArgumentParser, default_task: str | None = None) -> None:
    p.add_argument(
        "--task",
        default=default_task,
        required=default_task is None,
        help="task name (antonym, english-french, ...), builtin/<name>, or a .json file",
    )
    p.add_argument("--data-dir", default=None, help="directory of <task>.json files ($HEADSTEER_DATA_DIR)")
    _add_template_arg(p)
    p.add_argument("--n-train", type=count, default=10)
    p.add_argument("--max-test", type=non_negative_int, default=200, help="held-out pairs scored (0: all)")
    _add_token_limit_arg(p)


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    d = FitConfig()
    p.add_argument("--layer", type=non_negative_int, default=d.layer)
    p.add_argument("--gamma", type=non_negative_float, default=d.gamma, help="L1 weight γ")
    p.add_argument("--lam", type=non_negative_float, default=d.lam, help="per-head group weight λ")
    p.add_argument(
        "--loss",
        choices=PAIR_LOSSES,
        default=d.loss,
        help="first_token or sequence (option_kl needs option targets: only headsteer opinion uses it)",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--steps", type=count, default=d.steps)
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="step size; default per optimizer: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()),
    )
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prefix-cached forward (default); --no-fast runs the naive full forward, the reference",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="headsteer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit Δ on N pairs; write the intervention and its metrics")
    _add_model_args(p), _add_task_args(p), _add_fit_args(p)
    p.add_argument("--seed", type=int, default=0, help="training sample and fit seed")
    p.add_argument(
        "--out", required=True, help="output path stem: OUT.safetensors, OUT.json, OUT.metrics.json, OUT.history.csv"
    )

    p = sub.add_parser("eval", help="score a saved intervention on held-out pairs")
    _add_model_args(p), _add_task_args(p)
    p.add_argument("--intervention", required=True, help="path stem of a saved intervention")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the intervention's fit seed)")
    p.add_argument("--out", default=None, help="write the per-pair scores to this CSV")

    p = sub.add_parser("compare", help="zero-shot vs fitted Δ over several seeds (mean ± std)")
    _add_model_args(p), _add_task_args(p), _add_fit_args(p)
    p.add_argument("--seeds", type=int, nargs="+", action=Distinct, default=[0, 1, 2])
    p.add_argument("--out", default=None, help="write the per-seed results to this CSV")

    p = sub.add_parser("sweep", help="fit and score every (layer, seed); resumable CSV (the paper's Figure 1)")
    _add_model_args(p), _add_task_args(p), _add_fit_args(p)
    p.set_defaults(max_test=100)
    p.add_argument(
        "--layers",
        type=LayerSelection.parse,
        default=LayerSelection.parse("all"),
        help="'all', a list '0,2,4', a range '0-8', or both '0-3,8'",
    )
    p.add_argument("--seeds", type=count, default=5, help="seeds 0..SEEDS-1")
    p.add_argument("--out", required=True, help="results CSV; rerun the same command to resume")

    p = sub.add_parser("table", help="every method x task on the same splits (the paper's Tables 1, 4, 6); resumable")
    _add_model_args(p)
    p.add_argument(
        "--tasks", nargs="+", action=Distinct, default=["antonym", "synonym", "english-french", "english-german"]
    )
    p.add_argument("--data-dir", default=None, help="directory of <task>.json files ($HEADSTEER_DATA_DIR)")
    _add_template_arg(p)
    p.add_argument("--seeds", type=count, default=5, help="seeds 0..SEEDS-1")
    p.add_argument(
        "--methods", nargs="+", action=Distinct, default=None, help="default: all (see headsteer.paper.table.METHODS)"
    )
    p.add_argument("--n-train", type=count, default=10)
    p.add_argument("--max-test", type=non_negative_int, default=100, help="held-out pairs scored per cell (0: all)")
    p.add_argument("--layer", type=non_negative_int, default=FitConfig().layer, help="Δ's layer")
    p.add_argument("--fv-top-k", type=count, default=10, help="heads summed into the function vector")
    p.add_argument("--peft-steps", type=count, default=FitConfig().steps, help="PEFT training steps (default: as Δ)")
    _add_token_limit_arg(p)
    p.add_argument("--out", required=True, help="results CSV (OUT.md gets the summary); rerun to resume")

    p = sub.add_parser(
        "compose", help="task composition: Δ_outer + Δ_inner on outer∘inner (the paper's Table 2); resumable"
    )
    _add_model_args(p)
    p.add_argument(
        "--compose",
        nargs=2,
        action=AppendDistinct,
        metavar=("OUTER", "INNER"),
        default=None,
        help="one composed task, e.g. --compose english-french antonym (repeatable; default: the paper's four)",
    )
    p.add_argument("--data-dir", default=None, help="directory of <task>.json files ($HEADSTEER_DATA_DIR)")
    _add_template_arg(p)
    p.add_argument("--seeds", type=count, default=5, help="seeds 0..SEEDS-1")
    p.add_argument("--n-train", type=count, default=10)
    p.add_argument(
        "--max-test", type=non_negative_int, default=100, help="held-out composed pairs scored per cell (0: all)"
    )
    p.add_argument("--layer", type=non_negative_int, default=FitConfig().layer, help="the layer of every Δ")
    _add_token_limit_arg(p)
    p.add_argument("--out", required=True, help="results CSV (OUT.md gets the summary); rerun to resume")

    p = sub.add_parser("opinion", help="steer answers toward a group's OpinionQA distribution (the paper's Table 3)")
    _add_model_args(p)
    p.add_argument(
        "--group",
        action=AppendDistinct,
        default=None,
        help="a group by name, e.g. 'Northeast' or 'INCOME:Refused' (repeatable; default: the paper's four)",
    )
    p.add_argument("--data-dir", default=None, help="the OpinionQA directory ($HEADSTEER_OPINIONQA_DIR)")
    p.add_argument("--seeds", type=count, default=5, help="seeds 0..SEEDS-1")
    p.add_argument("--n-train", type=count, default=10, help="training questions per (group, seed)")
    p.add_argument("--max-test", type=non_negative_int, default=100, help="held-out questions scored per cell (0: all)")
    p.add_argument("--layer", type=non_negative_int, default=FitConfig().layer, help="Δ's layer")
    p.add_argument("--out", required=True, help="results CSV (OUT.md gets the summary); rerun to resume")

    p = sub.add_parser("heads", help="which heads a task uses: Δ with/without penalty, λ path, FV head effects")
    _add_model_args(p), _add_task_args(p), _add_fit_args(p)
    p.add_argument("--seed", type=int, default=0, help="training sample and fit seed")
    p.add_argument(
        "--strengths",
        type=non_negative_float,
        nargs="+",
        action=Distinct,
        default=None,
        help="path of γ = λ values (default: 0.3 .. 0)",
    )
    p.add_argument("--out", default=None, help="output folder (default: results/heads/<task>)")

    p = sub.add_parser("figures", help="regenerate every figure from saved results (HTML + PNG)")
    p.add_argument("--results", default="results", help="folder with sweep_*.csv, table.csv, heads/<task>/")
    p.add_argument("--out", default="figures")
    p.add_argument(
        "--static",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also PNG via kaleido (needs a Chromium; BROWSER_PATH=/usr/bin/chromium)",
    )

    p = sub.add_parser("judge", help="GPT-Eval: an LLM judge votes on saved predictions (OpenAI-compatible endpoint)")
    p.add_argument("predictions", help="a predictions CSV (e.g. the table's OUT.predictions.csv)")
    p.add_argument("--out", required=True, help="votes CSV (OUT.md gets the GPT-Eval table); rerun to resume")
    p.add_argument("--queries", type=count, default=5, help="queries per prediction")
    p.add_argument("--min-yes", type=count, default=3, help="accepted with at least this many yes votes")
    p.add_argument("--workers", type=count, default=4, help="queries in flight at once")

    p = sub.add_parser("demo", help="the README's main job: default model, built-in antonyms, a few minutes")
    _add_model_args(p)
    p.add_argument("--task", default="builtin/antonym")
    p.add_argument("--steps", type=count, default=FitConfig().steps)
    _add_token_limit_arg(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input (a HeadsteerError) is one line on stderr and exit status 2.

    Any other exception is a bug and keeps its traceback.
    """
    try:
        args = parse_args(argv)
    except CommandLineError as err:
        return _refuse(err.prog, err)
    from headsteer.cli import commands
    from headsteer.prompts import token_limit

    prog = f"headsteer {args.command}"
    try:
        # Commands without --max-tokens tokenize no pairs; the default limit stands for them.
        with token_limit(getattr(args, "max_tokens", DEFAULT_MAX_TOKENS)):
            return getattr(commands, args.command)(args)
    except HeadsteerError as err:
        return _refuse(prog, err)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _refuse(prog: str, err: Exception) -> int:
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # always one line
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
