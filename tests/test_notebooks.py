"""Every notebook runs top to bottom, headless, on a tiny model (HEADSTEER_QUICK=1), so none can rot.

The committed notebooks carry the real model's outputs (``make_notebooks.py --execute``); the
tests run a copy in memory and never write it back.
"""

import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import REPO, save_tiny_model

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model("gemma3", tmp_path_factory.mktemp("nbmodel"))


def test_the_committed_notebooks_are_what_the_generator_writes():
    """notebooks/make_notebooks.py is the source: every notebook it defines is committed, cell for cell
    (outputs aside)."""
    sys.path.insert(0, str(REPO / "notebooks"))
    try:
        from make_notebooks import NOTEBOOKS as SOURCES
    finally:
        sys.path.remove(str(REPO / "notebooks"))
    assert sorted(SOURCES) == [p.name for p in NOTEBOOKS]
    for name, cells in SOURCES.items():
        committed = nbformat.read(REPO / "notebooks" / name, as_version=4)
        assert [c.source for c in committed.cells] == cells, f"{name} differs from make_notebooks.py: regenerate it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HEADSTEER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("HEADSTEER_QUICK", "1")
    committed = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    assert path.read_bytes() == committed  # the tiny model's outputs stay in memory
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(
        "text/html" in o.get("data", {}) or "application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs
    )
