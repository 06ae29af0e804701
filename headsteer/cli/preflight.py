"""What a command checks before it loads the model's weights: every input that can be checked, in seconds.

A command validates its configs, loads its tasks and checks its output
locations, then opens the model (:func:`headsteer.models.open_model`: config
and tokenizer only) and checks here what those allow: layer indices against
the number of layers; every pair the run will fit on or score against the
template's prefix rule and the token limit (:mod:`headsteer.prompts`); a
non-empty test set for every split. Only then are the weights loaded. Each
refusal is a :class:`~headsteer.errors.HeadsteerError` naming the flag, file
or pair at fault, and nothing has been written.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from headsteer.errors import ConfigError, ModelMismatchError, OutputPathError, TaskError
from headsteer.files import check_output_file, predictions_path, settings_path, summary_path
from headsteer.intervention import Intervention
from headsteer.models import ModelFiles, canonical_name
from headsteer.prompts import Template, check_pairs, prompt_tokens
from headsteer.tasks import Pair, Task, split_task


# ---- output locations -------------------------------------------------------------------
def check_results_outputs(out: str, flag: str = "--out", predictions: bool = False, summary: bool = False) -> Path:
    """A results CSV and the files beside it (settings; predictions and ``.md`` summary if asked) can be written."""
    path = check_output_file(out, flag)
    siblings = {"settings": settings_path(path)}
    if predictions:
        siblings["predictions"] = predictions_path(path)
    if summary:
        siblings["summary"] = summary_path(path)
    for kind, sibling in siblings.items():
        if sibling == path:
            raise OutputPathError(f"{flag} {out}: the {kind} file would be the results file itself; name it .csv")
        check_output_file(sibling, flag)
    return path


def check_new_output_file(out: str, flag: str = "--out") -> Path:
    """An output file that does not exist yet and can be written: results that are not resumable are never replaced."""
    path = check_output_file(out, flag)
    if path.exists():
        raise OutputPathError(
            f"{flag} {out}: already exists and would be replaced; give a new path, e.g. {_free(path)}"
        )
    return path


def _free(path: Path) -> Path:
    """``path`` with the first ``-2``, ``-3``, ... suffix no file has yet."""
    n = 2
    while (candidate := path.with_stem(f"{path.stem}-{n}")).exists():
        n += 1
    return candidate


# ---- where the cells run ------------------------------------------------------------------
def check_ray(args: argparse.Namespace) -> None:
    """--ray-workers and --ray-threads need --ray; --ray needs Ray installed (the ``ray`` extra) and no --device."""
    if args.ray is None:
        for flag, value in (("--ray-workers", args.ray_workers), ("--ray-threads", args.ray_threads)):
            if value is not None:
                raise ConfigError(f"{flag} needs --ray (without it every cell runs in this process)")
        return
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--ray needs Ray, which is not installed: pip install 'headsteer[ray]'")
    if args.device != "cpu":
        raise ConfigError(
            f"--device {args.device} with --ray: each Ray worker runs on its own GPU where it has one, "
            "else on CPU (--device places a model run in this process)"
        )


# ---- what the model's config allows -----------------------------------------------------
def check_model_layer(files: ModelFiles, layer: int, flag: str = "--layer") -> None:
    if not 0 <= layer < files.n_layers:
        raise ConfigError(f"{flag} {layer} is out of range: model {files.name!r} has layers 0..{files.n_layers - 1}")


def check_intervention_model(iv: Intervention, files: ModelFiles, flag: str = "--intervention") -> None:
    """What can be compared before the weights load: the model's name (as ModelSignature compares it) and layers."""
    problems = [
        f"{what}: trained on {theirs!r}, model has {ours!r}"
        for what, theirs, ours, same in (
            ("name", iv.model.name, files.name, canonical_name(iv.model.name) == canonical_name(files.name)),
            ("n_layers", iv.model.n_layers, files.n_layers, iv.model.n_layers == files.n_layers),
        )
        if not same
    ]
    if problems:
        raise ModelMismatchError(
            f"{flag}: intervention for task {iv.task!r} does not fit this model: " + "; ".join(problems)
        )


# ---- every pair the run uses --------------------------------------------------------------
@contextmanager
def naming_task(name: str) -> Iterator[None]:
    """Prefix a task error raised inside with the task's name (the pair alone may not say which task)."""
    try:
        yield
    except TaskError as err:
        raise type(err)(f"task {name!r}: {err}") from None


def check_task_pairs(
    task: str, tokenizer, template: Template, pairs: Sequence[Pair], include_stop: bool = False
) -> None:
    with naming_task(task):
        check_pairs(tokenizer, template, pairs, include_stop)


def check_prompts(task: str, tokenizer, template: Template, inputs: Sequence[str]) -> None:
    """Every prompt (e.g. with few-shot demonstrations) is within the token limit."""
    with naming_task(task):
        for text in inputs:
            prompt_tokens(tokenizer, template, text)


def checked_split(
    files: ModelFiles,
    template: Template,
    task: Task,
    n_train: int,
    seed: int,
    max_test: int | None,
    include_stop: bool = False,
) -> tuple[list[Pair], list[Pair]]:
    """The split a run will use, once its training and test pairs all tokenize (prefix rule, token limit)."""
    train, test = split_task(task, n_train=n_train, seed=seed, max_test=max_test)
    check_task_pairs(task.name, files.tokenizer, template, train, include_stop)
    check_task_pairs(task.name, files.tokenizer, template, test)
    return train, test
