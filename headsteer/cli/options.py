"""How every parser is built (its class, help format, ``add_command``), and the flags several commands share.

A command's own flags sit beside its handler (:mod:`~headsteer.cli.run`,
:mod:`~headsteer.cli.experiments`, :mod:`~headsteer.cli.outputs`,
:mod:`~headsteer.cli.demo`). A shared flag is defined once, here, with its
default read from the config field it fills, and means the same thing in every
command that takes it: ``--layer`` and the other fit flags are
:class:`~headsteer.config.FitConfig`'s fields of the same name, ``--n-train``
and ``--max-test`` the split sizes (defaults: the paper's
:class:`~headsteer.paper.experiment.ExperimentConfig`), ``--seeds N`` the seeds
0..N-1.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import NoReturn, TypeAlias

from headsteer.cli.flags import count, non_negative_float, non_negative_int, positive_float
from headsteer.config import DEFAULT_LR, OPTIMIZERS, PAIR_LOSSES, FitConfig
from headsteer.errors import ConfigError
from headsteer.evaluate import DEFAULT_MAX_NEW_TOKENS
from headsteer.files import CACHE_ENV
from headsteer.models import DTYPES
from headsteer.paper.experiment import ExperimentConfig
from headsteer.paper.workers import RayConfig
from headsteer.prompts import DEFAULT_MAX_TOKENS, TEMPLATES
from headsteer.tasks import DATA_DIR_ENV, TODD_TASKS

FIT = FitConfig()  # every fit flag's default
SPLIT = ExperimentConfig()  # the split sizes every command defaults to: n_train 10, max_test 100
DEFAULT_TEMPLATE = "qa"  # Todd et al.'s, which the paper's results use
# Where the times quoted in the commands' help were taken.
MEASURED_ON = "measured on a 2-core CPU with Gemma 3 270M"


class CommandLineError(ConfigError):
    """argparse refused the command line; ``prog`` is the (sub)command it belongs to."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """Raises on a usage error instead of printing the usage and exiting: ``main`` prints one line.

    Made with ``allow_abbrev=False`` (``add_command``, ``build_parser``): a prefix is never taken for a
    longer flag, so ``sweep --layer 4`` is refused rather than read as ``--layers 4``.
    """

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(self.prog, f"{message} (see {self.prog} --help)")


Handler = Callable[[argparse.Namespace], int]
# What ``add_subparsers`` returns; typeshed names the class, argparse does not export it.
Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions keep their line breaks; every option with a default says it, as it would be typed."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # The hook ArgumentDefaultsHelpFormatter itself overrides. A None default is left out (the help
        # says what leaving the flag out does) and lists are shown as typed, not as Python reprs.
        text = action.help or ""
        if "%(default)" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {as_typed(action.default)})"


def as_typed(value: object) -> str:
    """A default as a user would type it: list items space-separated, an item with spaces quoted."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return " ".join(shlex.quote(str(item)) for item in items).replace("%", "%%")  # help text is %-formatted


def timed(description: str, time: str) -> str:
    """A long command's description, ending with how long it takes and where that was measured."""
    return f"{description}\n\nTime: {time},\n{MEASURED_ON}."


def add_command(sub: Subcommands, name: str, summary: str, description: str, run: Handler) -> argparse.ArgumentParser:
    """A subcommand's parser: ``summary`` in ``headsteer --help``, ``description`` atop its own help."""
    parser = sub.add_parser(
        name, help=summary, description=description, formatter_class=HelpFormatter, allow_abbrev=False
    )
    parser.set_defaults(run=run)
    return parser


# ---- the model --------------------------------------------------------------------------
def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="a Hugging Face model name or a local model folder "
        "(default: Gemma 3 270M from the installed package, converted once and cached; no download)",
    )
    p.add_argument(
        "--cache-dir",
        help=f"where the converted default model is kept (default: ${CACHE_ENV}, else ~/.cache/headsteer)",
    )
    p.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="the model's weights and activations (Δ and its optimiser state stay float32)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where the model runs: cpu, cuda, cuda:1, ...; auto splits it over every GPU (Hugging Face's "
        "device_map='auto')",
    )


# ---- where the cells run ------------------------------------------------------------------
def add_ray_options(p: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS], --ray-workers, --ray-threads: the experiment's cells on Ray actors (the ``ray`` extra)."""
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the cells on Ray workers, each loading the model once (pip install 'headsteer[ray]'): "
        "ADDRESS is a running cluster's (as `ray start --head` prints it; 'auto': the one on this machine); "
        "without it, Ray's on this machine (a new one if none runs); rows are merged into --out here",
    )
    p.add_argument(
        "--ray-workers",
        type=count,
        metavar="N",
        help="Ray workers, each with its own copy of the model (default: one per GPU of the cluster, else its "
        "CPUs // --ray-threads; never more than there are cells)",
    )
    p.add_argument(
        "--ray-threads",
        type=count,
        metavar="N",
        help=f"CPU threads of each Ray worker (default: {RayConfig().threads}; Ray reserves as many CPUs for it, "
        "so workers never oversubscribe the cores)",
    )


def ray_config(args: argparse.Namespace) -> RayConfig | None:
    """The Ray settings the flags describe; None without --ray (the cells run in this process)."""
    if args.ray is None:
        return None
    threads = RayConfig().threads if args.ray_threads is None else args.ray_threads
    return RayConfig(address=args.ray or None, n_workers=args.ray_workers, threads=threads)


# ---- the task, its prompts and its split ---------------------------------------------------
def add_task_option(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--task",
        default=default,
        required=default is None,
        help=f"a task name in --data-dir ({', '.join(TODD_TASKS)}), builtin/<name>, "
        "or a .json file of {input, output} pairs",
    )


def add_data_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help=f"folder of <task>.json files (default: ${DATA_DIR_ENV}, else shared/datasets/function_vectors)",
    )


def add_template_option(p: argparse.ArgumentParser, note: str = "") -> None:
    shapes = "; ".join(f"{name}: {t.prompt!r} -> {t.answer!r}" for name, t in TEMPLATES.items())
    p.add_argument(
        "--template", default=DEFAULT_TEMPLATE, choices=sorted(TEMPLATES), help=f"prompt template ({shapes}){note}"
    )


def add_task_options(p: argparse.ArgumentParser) -> None:
    """--task, --data-dir, --template."""
    add_task_option(p)
    add_data_dir_option(p)
    add_template_option(p)


def add_n_train_option(p: argparse.ArgumentParser, what: str = "training pairs") -> None:
    p.add_argument("--n-train", type=count, default=SPLIT.n_train, metavar="N", help=what)


def add_max_test_option(p: argparse.ArgumentParser, what: str = "held-out pairs scored") -> None:
    p.add_argument(
        "--max-test", type=non_negative_int, default=SPLIT.max_test, metavar="N", help=f"{what} (0: all of them)"
    )


def max_test(args: argparse.Namespace) -> int | None:
    return args.max_test or None  # --max-test 0: every held-out pair


def add_token_limit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-tokens",
        type=count,
        default=DEFAULT_MAX_TOKENS,
        metavar="N",
        help="refuse a pair whose prompt + answer (or whose few-shot prompt) is longer than N tokens",
    )


# ---- seeds ------------------------------------------------------------------------------
def add_seeds_option(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--seeds", type=count, default=default, metavar="N", help="how many seeds: runs seeds 0..N-1")


def seeds(args: argparse.Namespace) -> range:
    return range(args.seeds)


# ---- the fit (FitConfig's fields, same names) ----------------------------------------------
def add_layer_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", type=non_negative_int, default=FIT.layer, help="the block whose heads Δ is added to")


def add_steps_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps", type=count, default=FIT.steps, help="optimisation steps, each a pass over the training set"
    )


def add_max_new_tokens_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-new-tokens",
        type=count,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help="tokens generated per held-out answer before it is cut (results made before 2026-11-24 used 6)",
    )


def add_loss_option(p: argparse.ArgumentParser, default: str = FIT.loss) -> None:
    p.add_argument(
        "--loss",
        choices=PAIR_LOSSES,
        default=default,
        help="Δ's loss on pairs: sequence, every answer token and the stop string (answers that finish; chosen "
        "as the default by cross-validation on training pairs, see RESEARCH.md); first_token, the answer's first "
        "token only (the paper's; results made before 2026-11-24 used it)",
    )


def add_fit_options(p: argparse.ArgumentParser, layer: bool = True, fast: bool = True) -> None:
    """--layer (unless the command sets the layers), --gamma, --lam, --loss, --optimizer, --steps, --lr, --fast."""
    if layer:
        add_layer_option(p)
    p.add_argument("--gamma", type=non_negative_float, default=FIT.gamma, help="γ: weight of the L1 penalty on Δ")
    p.add_argument(
        "--lam", type=non_negative_float, default=FIT.lam, help="λ: weight of the per-head group penalty on Δ"
    )
    add_loss_option(p)
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=FIT.optimizer,
        help="prox_adam: Adam with the penalty's exact prox (heads reach exactly 0); fista: accelerated proximal "
        "gradient; adam: Adam on the whole objective (the paper's; no exact zeros)",
    )
    add_steps_option(p)
    p.add_argument(
        "--lr",
        type=positive_float,
        help="step size (default per optimizer: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")",
    )
    if fast:
        p.add_argument(
            "--fast",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="fit with the prefix-cached forward; --no-fast runs the full forward (the reference; slower)",
        )


def fit_config(args: argparse.Namespace, seed: int, layer: int | None = None) -> FitConfig:
    """The FitConfig the fit flags describe, for one seed; ``layer`` where the command has no --layer."""
    return FitConfig(
        layer=args.layer if layer is None else layer,
        gamma=args.gamma,
        lam=args.lam,
        loss=args.loss,
        optimizer=args.optimizer,
        steps=args.steps,
        lr=args.lr,
        seed=seed,
    )
