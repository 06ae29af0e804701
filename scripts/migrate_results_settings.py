"""One-off migration: rewrite the committed results sidecars (``results/*.csv.settings.json``) in format 2.

Sidecars written before format 2 (:mod:`headsteer.paper.results`) recorded each
task by *name*, the model by *name*, and the template and config. Format 2
records what the rows depend on by content (each task's or OpinionQA group's
data by sha256, the model by fingerprint), and refuses a sidecar of the old
format, so without this migration a rerun of the README's commands on the
committed files would be refused instead of resuming.

For each results file the README's commands made, this script builds the
sidecar that the same command would write now: it parses the documented
command line with headsteer's own parser (so every default is the command's),
builds the configs as :mod:`headsteer.cli.commands` does, reads the task files from
the default data directories (``shared/datasets/function_vectors`` and
``shared/datasets/opinionqa`` beside the checkout), and calls the library's
own settings functions (``sweep_settings``, ``table_settings``,
``compose_settings``, ``opinion_settings``). Before writing anything it checks,
for every file, that

1. every value the old sidecar recorded (task name, template, config, n_train,
   max_test, model name, prompts, personas) equals the new one; the only
   difference allowed is the sweeps' config losing its ``layer`` and ``seed``
   (format 2 leaves them out: each sweep cell sets its own);
2. the CSV's rows are exactly the command's cells (its tasks, seeds, layers;
   each once) with the command's ``n_train``;
3. the data read now gives the rows' held-out splits: every row's ``n_test``,
   and, where ``<stem>.predictions.csv`` exists (table, compose, opinion), the
   held-out items saved for every (task, method, seed), in order, are exactly
   the split's items (input and target; for opinions the question key and the
   group's target distribution). The sweeps keep no predictions: their n_test
   per seed is checked, and their three task files are the ones the table's
   predictions check item by item.

On any mismatch it prints every problem, writes nothing and exits 1. Otherwise
it replaces each sidecar atomically and then opens each results file with the
new settings (as a rerun would) to confirm it is accepted.

Run once, from the repository root (loads the default model: ~20 s, ~2 GB)::

    HEADSTEER_CACHE_DIR=~/.cache/headsteer python scripts/migrate_results_settings.py [--results results] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from headsteer.cli import build_parser
from headsteer.config import FitConfig
from headsteer.files import predictions_path, settings_path, write_json_atomic
from headsteer.models import load_model
from headsteer.paper.composition import PAPER_COMPOSITIONS, ComposeConfig, compose_settings, compose_tasks
from headsteer.paper.methods import COMPOSE_METHODS, OPINION_METHODS, TABLE_METHODS
from headsteer.paper.opinion import OpinionConfig, opinion_settings
from headsteer.paper.opinionqa import PAPER_GROUPS, load_group, split_questions
from headsteer.paper.results import ResultsFile, Settings
from headsteer.paper.runner import KEY
from headsteer.paper.sweep import COLUMNS as SWEEP_COLUMNS
from headsteer.paper.sweep import sweep_settings
from headsteer.paper.table import TableConfig, table_settings
from headsteer.prompts import get_template
from headsteer.tasks import load_task, split_task

SWEEP_TASKS = ("antonym", "english-french", "english-german")
SWEEP_LEFT_OUT = ("layer", "seed")  # the sweep config fields format 2 no longer records


@dataclass(frozen=True)
class Migration:
    """One results file: the settings its command writes now, its rows' key, and the expected held-out items."""

    csv: Path
    settings: Settings
    key: tuple[str, ...]
    columns: tuple[str, ...]
    expected_cells: set[tuple]
    n_train: int
    n_test: dict[tuple[str, int], int]  # (task, seed) -> held-out items
    items: dict[tuple[str, int], list[tuple[str, str]]] | None  # (task, seed) -> the predictions' item columns
    item_columns: tuple[str, str] | None
    prediction_columns: tuple[str, ...] | None


def _args(command: list[str], out: Path) -> argparse.Namespace:
    """The README's command line (with ``--out`` in the results folder), parsed by headsteer's own parser."""
    return build_parser().parse_args([*command, "--out", str(out)])


def sweep_migration(model, results: Path, task_name: str) -> Migration:
    csv = results / f"sweep_{task_name}.csv"
    args = _args(["sweep", "--task", task_name, "--layers", "all", "--seeds", "5"], csv)
    assert args.layers == "all", "the documented sweep covers every layer"
    config = FitConfig(
        layer=args.layer,
        gamma=args.gamma,
        lam=args.lam,
        loss=args.loss,
        optimizer=args.optimizer,
        steps=args.steps,
        lr=args.lr,
        seed=0,
    )  # as commands.sweep builds it
    task = load_task(args.task, args.data_dir)
    max_test = args.max_test or None
    settings = sweep_settings(model, task, get_template(args.template), config, args.n_train, max_test)
    seeds = range(args.seeds)
    n_test = {(task.name, s): len(split_task(task, args.n_train, s, max_test)[1]) for s in seeds}
    cells = {(layer, s) for layer in range(model.cfg.n_layers) for s in seeds}
    return Migration(
        csv, settings, ("layer", "seed"), tuple(SWEEP_COLUMNS), cells, args.n_train, n_test, None, None, None
    )


def table_migration(model, results: Path) -> Migration:
    csv = results / "table.csv"
    args = _args(["table", "--tasks", "antonym", "synonym", "english-french", "english-german", "--seeds", "5"], csv)
    config = TableConfig(
        n_train=args.n_train,
        max_test=args.max_test or None,
        layer=args.layer,
        fv_top_k=args.fv_top_k,
        peft_steps=args.peft_steps,
        methods=tuple(TABLE_METHODS),
    )
    tasks = [load_task(name, args.data_dir) for name in args.tasks]
    settings = table_settings(model, tasks, get_template(args.template), config)
    splits = {
        (t.name, s): split_task(t, config.n_train, s, config.max_test)[1] for t in tasks for s in range(args.seeds)
    }
    return _pair_migration(csv, settings, splits, TABLE_METHODS, config.n_train)


def compose_migration(model, results: Path) -> Migration:
    csv = results / "compose.csv"
    args = _args(["compose", "--seeds", "5"], csv)
    config = ComposeConfig(n_train=args.n_train, max_test=args.max_test or None, layer=args.layer)
    composed = [
        compose_tasks(load_task(outer, args.data_dir), load_task(inner, args.data_dir), config.min_pairs)
        for outer, inner in args.compose or PAPER_COMPOSITIONS
    ]
    settings = compose_settings(model, composed, get_template(args.template), config)
    splits = {
        (c.name, s): split_task(c.task, config.n_train, s, config.max_test)[1]
        for c in composed
        for s in range(args.seeds)
    }
    return _pair_migration(csv, settings, splits, COMPOSE_METHODS, config.n_train)


def _pair_migration(csv: Path, settings: Settings, splits, methods, n_train: int) -> Migration:
    items = {cell: [(p.input, p.output) for p in test] for cell, test in splits.items()}
    cells = {(task, method, seed) for task, seed in splits for method in methods}
    n_test = {cell: len(test) for cell, test in splits.items()}
    columns = (*KEY, "n_train", "n_test", "first_token", "exact_match")
    return Migration(
        csv,
        settings,
        tuple(KEY),
        columns,
        cells,
        n_train,
        n_test,
        items,
        ("input", "target"),
        (*KEY, "input", "target", "prediction", "first_token", "exact_match"),
    )


def opinion_migration(model, results: Path) -> Migration:
    csv = results / "opinion.csv"
    args = _args(["opinion", "--seeds", "5"], csv)  # the README's default: the paper's four groups
    config = OpinionConfig(n_train=args.n_train, max_test=args.max_test or None, layer=args.layer)
    groups = {name: load_group(name, args.data_dir) for name in args.group or PAPER_GROUPS}
    settings = opinion_settings(model, groups, config)
    items, n_test = {}, {}
    for name, group in groups.items():
        for seed in range(args.seeds):
            _, test = split_questions(group, config.n_train, seed, config.max_test)
            items[(name, seed)] = [(q.key, json.dumps([round(p, 6) for p in q.target])) for q in test]
            n_test[(name, seed)] = len(test)
    cells = {(name, method, seed) for name, seed in items for method in OPINION_METHODS}
    return Migration(
        csv,
        settings,
        tuple(KEY),
        (*KEY, "n_train", "n_test", "kl"),
        cells,
        config.n_train,
        n_test,
        items,
        ("key", "target"),
        (*KEY, "key", "target", "prediction", "kl"),
    )


# ---- checks ------------------------------------------------------------------------------------
def check_recorded(migration: Migration) -> list[str]:
    """What the old sidecar recorded that the new settings do not (nothing, for a faithful migration)."""
    path = settings_path(migration.csv)
    old = json.loads(path.read_text(encoding="utf-8"))
    if "format" in old:
        return [f"{path}: already format {old['format']}; nothing to migrate"]
    new = migration.settings.values
    problems = []
    if set(old) != set(new):
        problems.append(f"{path}: recorded fields {sorted(old)}, the command's are {sorted(new)}")
    for field in sorted(set(old) & set(new)):
        then, now = old[field], new[field]
        if field == "model":
            now = now["name"]
        if field == "config" and "task" in old:  # a sweep: its config's layer and seed are no longer recorded
            then = {k: v for k, v in then.items() if k not in SWEEP_LEFT_OUT}
        if then != now:
            problems.append(f"{path}: {field} was {json.dumps(then)}, the command gives {json.dumps(now)}")
    return problems


def check_rows(migration: Migration) -> list[str]:
    """The CSV holds exactly the command's cells, with its n_train and the n_test the data gives."""
    rows = pd.read_csv(migration.csv)
    problems = []
    if tuple(rows.columns) != migration.columns:
        problems.append(f"{migration.csv}: columns {list(rows.columns)}, expected {list(migration.columns)}")
    keys = [
        tuple(int(v) if k in ("layer", "seed") else v for k, v in zip(migration.key, row))
        for row in rows[list(migration.key)].itertuples(index=False)
    ]
    if len(keys) != len(set(keys)) or set(keys) != migration.expected_cells:
        problems.append(
            f"{migration.csv}: {len(keys)} rows ({len(set(keys))} distinct cells); the command makes "
            f"{len(migration.expected_cells)}; missing {sorted(migration.expected_cells - set(keys))[:5]}, "
            f"extra {sorted(set(keys) - migration.expected_cells)[:5]}"
        )
    if not rows["n_train"].eq(migration.n_train).all():
        problems.append(f"{migration.csv}: n_train is not {migration.n_train} in every row")
    for task, seed, n_test in zip(rows["task"], rows["seed"], rows["n_test"]):
        expected = migration.n_test.get((task, int(seed)))
        if expected != n_test:
            problems.append(f"{migration.csv}: {task} seed {seed}: n_test {n_test}, the data's split gives {expected}")
    return problems


def check_items(migration: Migration) -> list[str]:
    """Every (task, method, seed)'s saved held-out items are the split's items, in order."""
    if migration.items is None:
        return []
    path = predictions_path(migration.csv)
    saved = pd.read_csv(path, keep_default_na=False, dtype=str)
    problems = []
    a, b = migration.item_columns
    for (task, method, seed), group in saved.groupby(["task", "method", "seed"], sort=False):
        expected = migration.items.get((task, int(seed)))
        if list(zip(group[a], group[b])) != expected:
            problems.append(f"{path}: {task} / {method} / seed {seed}: the saved items are not the split's")
    groups = saved.groupby(["task", "method", "seed"]).ngroups
    if groups != len(migration.expected_cells):
        problems.append(f"{path}: {groups} (task, method, seed) groups, expected {len(migration.expected_cells)}")
    return problems


CHECKS: tuple[Callable[[Migration], list[str]], ...] = (check_recorded, check_rows, check_items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--dry-run", action="store_true", help="check and print, write nothing")
    args = parser.parse_args(argv)
    model = load_model()
    migrations = [
        *(sweep_migration(model, args.results, t) for t in SWEEP_TASKS),
        table_migration(model, args.results),
        compose_migration(model, args.results),
        opinion_migration(model, args.results),
    ]
    problems = [p for m in migrations for check in CHECKS for p in check(m)]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print("nothing written", file=sys.stderr)
        return 1
    for m in migrations:
        print(
            f"{settings_path(m.csv)}: {len(m.settings.inputs)} input(s) {sorted(m.settings.inputs)}, "
            f"model fingerprint {m.settings.values['model']['fingerprint'][:12]}…"
        )
    if args.dry_run:
        return 0
    for m in migrations:
        write_json_atomic(settings_path(m.csv), m.settings.to_json())
    for m in migrations:  # as a rerun would: the new sidecar is accepted and every row is done
        store = ResultsFile(m.csv, m.columns, m.key, m.settings, prediction_columns=m.prediction_columns)
        assert len(store.open()) == len(m.expected_cells), m.csv
    print("migrated", len(migrations), "sidecars")
    return 0


if __name__ == "__main__":
    sys.exit(main())
