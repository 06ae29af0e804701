"""Imports flow one way (ARCHITECTURE.md): a module imports its own room and the rooms above it only."""

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "headsteer"
# Rooms in import order; a module's room is its first dotted part after "headsteer".
ROOMS = [
    {"errors", "files", "strict_json", "config"},
    {"hooks", "backends", "models", "kernels", "tasks", "prompts", "training_record"},
    {"steering", "intervention"},
    {"fitting"},
    {"generation", "evaluate", "runs", "loss_choice"},
    {"baselines"},
    {"heads"},
    {"display", "plots"},
    {"paper"},
    {"cli"},
]
RANK = {name: rank for rank, room in enumerate(ROOMS) for name in room}
# The maths path reads and writes nothing and draws nothing.
NOT_FROM_FITTING = {"files", "display", "plots", "paper", "cli"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts != ("__init__",):  # the package's own __init__ gathers the public API from every room
            found[".".join(p for p in parts if p != "__init__")] = path
    return found


def room(module: str) -> str:
    return module.split(".")[0]


def imported(path: Path) -> set[str]:
    """Every headsteer module ``path`` imports, at any depth (function-level imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "headsteer":
            if node.module == "headsteer":
                names |= {alias.name for alias in node.names}
            else:
                names.add(node.module.removeprefix("headsteer."))
        elif isinstance(node, ast.Import):
            names |= {a.name.removeprefix("headsteer.") for a in node.names if a.name.startswith("headsteer.")}
    return names


def test_every_module_has_a_room():
    assert {room(m) for m in modules()} <= set(RANK), set(map(room, modules())) - set(RANK)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_flow_one_way(module):
    path = modules()[module]
    upward = [m for m in imported(path) if RANK[room(m)] > RANK[room(module)]]
    assert not upward, f"{module} ({room(module)}) imports {upward} from a room below it"
    if room(module) == "fitting":
        assert not {room(m) for m in imported(path)} & NOT_FROM_FITTING, f"{module} imports I/O or plotting"


def test_the_checker_sees_a_violation(tmp_path):
    """The test itself can fail: an upward import is found, even inside a function."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from headsteer.paper.table import build_table\n")
    assert "paper.table" in imported(bad)
