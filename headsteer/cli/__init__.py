"""The ``headsteer`` command line: this module assembles the parser and runs one subcommand (``main``).

Each subcommand's flags sit beside its handler (``add_<command>_parser`` next
to ``run_<command>``): :mod:`~headsteer.cli.run` (fit, eval, compare),
:mod:`~headsteer.cli.experiments` (sweep, table, compose, opinion, heads),
:mod:`~headsteer.cli.outputs` (figures, judge), :mod:`~headsteer.cli.demo`.
The flags several commands share are defined once in
:mod:`~headsteer.cli.options`; flag value types are in
:mod:`~headsteer.cli.flags`; the checks made before a model's weights load are
in :mod:`~headsteer.cli.preflight`.
"""

from __future__ import annotations

import argparse
import sys

from headsteer.cli import demo, experiments, outputs, run
from headsteer.cli.options import CommandLineError, HelpFormatter, Parser, Subcommands
from headsteer.errors import HeadsteerError
from headsteer.prompts import DEFAULT_MAX_TOKENS, token_limit

DESCRIPTION = """\
headsteer fits Δ, a small additive change to the attention heads' outputs at one layer, from
about ten examples of a task (antonyms, translation, ...), so that a language model does the
task zero-shot, and scores it on held-out examples. The default model is Gemma 3 270M, on CPU.

Start with `headsteer demo` (about 30 s; the first run also converts the model, about 1 min).
Then `headsteer fit` Δ for a task and `headsteer eval` it. `compare`, `sweep`, `table`,
`compose`, `opinion` and `heads` reproduce the paper's results; `figures` draws them.
`headsteer COMMAND --help` says what a command does, its flags and their defaults, and how
long it takes. More in README.md and docs/ in the headsteer repository."""

EPILOG = "Bad input is refused before any work, with exit status 2 and one line naming the flag, file or pair."

# In the order `headsteer --help` lists them: the main job first.
PARSERS = (
    demo.add_demo_parser,
    run.add_fit_parser,
    run.add_eval_parser,
    run.add_compare_parser,
    experiments.add_sweep_parser,
    experiments.add_table_parser,
    experiments.add_compose_parser,
    experiments.add_opinion_parser,
    experiments.add_heads_parser,
    outputs.add_figures_parser,
    outputs.add_judge_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="headsteer", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter, allow_abbrev=False
    )
    sub: Subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for add_parser in PARSERS:
        add_parser(sub)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; an unknown flag is blamed on the subcommand it was given to."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        prog = f"{parser.prog} {args.command}"
        raise CommandLineError(prog, f"unrecognized arguments: {' '.join(unknown)} (see {prog} --help)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input (a HeadsteerError) is one line on stderr and exit status 2.

    Any other exception is a bug and keeps its traceback.
    """
    try:
        args = parse_args(argv)
    except CommandLineError as err:
        return _refuse(err.prog, err)
    prog = f"headsteer {args.command}"
    try:
        # Commands without --max-tokens tokenize no pairs; the default limit stands for them.
        with token_limit(getattr(args, "max_tokens", DEFAULT_MAX_TOKENS)):
            return args.run(args)
    except HeadsteerError as err:
        return _refuse(prog, err)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _refuse(prog: str, err: Exception) -> int:
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # always one line
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
