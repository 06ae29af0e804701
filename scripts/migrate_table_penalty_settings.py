"""One-off migration: record Δ's penalty weights (``gamma``, ``lam``) in comparison-table sidecars.

``TableConfig`` now extends ``ExperimentConfig`` (:mod:`headsteer.paper.experiment`)
instead of repeating its fields, so a table's settings (``OUT.settings.json``)
record every field of it, ``gamma`` and ``lam`` included: the penalty weights
the table's Δ methods fit with. A table made before recorded neither, and its
Δ methods fitted with ``FitConfig``'s defaults then, γ = λ = 0.01 (the only
values those tables could use), so without this migration a rerun of the same
command on such a file would be refused instead of resuming.

For each sidecar given, this script checks that it is a format-2 table sidecar
whose config holds exactly the fields a table recorded before (no ``gamma``,
no ``lam``), inserts ``gamma`` and ``lam`` = 0.01 after ``fit_steps`` (the
order ``TableConfig`` has them), checks that the result is exactly the config
``table_settings`` records now for the same ``TableConfig``, and replaces the
sidecar atomically. Nothing else in the file changes. A sidecar that already
records the penalty is left alone; any other mismatch writes nothing and exits 1.

Run once, from the repository root::

    python scripts/migrate_table_penalty_settings.py results/table.csv.settings.json [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from headsteer.files import write_json_atomic
from headsteer.paper.results import FORMAT
from headsteer.paper.table import TableConfig

# The config fields a comparison table recorded before it recorded the penalty, in their order.
BEFORE = ("n_train", "max_test", "layer", "fit_steps", "fv_top_k", "fv_layer", "icv_strength", "peft_steps", "methods")
# What the table's Δ methods fitted with then: FitConfig's default γ and λ.
PENALTY = {"gamma": 0.01, "lam": 0.01}


def migrated(path: Path) -> dict | None:
    """The sidecar at ``path`` with the penalty recorded; None if it already records it. Raises ValueError."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: settings format {data.get('format')!r}, expected {FORMAT}")
    config = data["settings"]["config"]
    if "methods" not in config:
        raise ValueError(f"{path}: not a comparison table's sidecar (its config has no 'methods')")
    if set(PENALTY) <= set(config):
        return None
    if tuple(config) != BEFORE:
        raise ValueError(f"{path}: config fields {list(config)}, expected a table's {list(BEFORE)}")
    at = BEFORE.index("fit_steps") + 1
    items = list(config.items())
    new = dict(items[:at] + list(PENALTY.items()) + items[at:])
    now = {**TableConfig(**{k: v for k, v in new.items() if k != "methods"}).to_dict(), "methods": None}
    if new != now or list(new) != list(now):
        raise ValueError(f"{path}: the migrated config {new} is not what a table records now, {now}")
    return {**data, "settings": {**data["settings"], "config": new}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sidecars", nargs="+", type=Path, help="table sidecars, e.g. results/table.csv.settings.json")
    parser.add_argument("--dry-run", action="store_true", help="check and print, write nothing")
    args = parser.parse_args(argv)
    try:
        plans = [(path, migrated(path)) for path in args.sidecars]
    except (ValueError, KeyError, OSError) as err:
        print(f"{err}\nnothing written", file=sys.stderr)
        return 1
    for path, data in plans:
        print(f"{path}: {'already records gamma and lam' if data is None else 'gamma, lam = 0.01 added'}")
        if data is not None and not args.dry_run:
            write_json_atomic(path, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
