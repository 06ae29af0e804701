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


def generator():
    sys.path.insert(0, str(REPO / "notebooks"))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(REPO / "notebooks"))
    return make_notebooks


def test_the_committed_notebooks_are_what_the_generator_writes():
    """notebooks/make_notebooks.py is the source: every notebook it defines is committed, cell for cell
    (outputs aside)."""
    SOURCES = generator().NOTEBOOKS
    assert sorted(SOURCES) == [p.name for p in NOTEBOOKS]
    for name, cells in SOURCES.items():
        committed = nbformat.read(REPO / "notebooks" / name, as_version=4)
        assert [c.source for c in committed.cells] == cells, f"{name} differs from make_notebooks.py: regenerate it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_committed_notebooks_carry_the_default_models_outputs(path):
    """A reader on GitHub sees what the real default model gave: every code cell that shows something has
    run, in order, without errors, and nothing of a test's tiny model was written back."""
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not run top to bottom ({counts})"
    outputs = [o for cell in code for o in cell.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "error"]
    text = nbformat.writes(nb)
    assert "tiny" not in text.lower() and "HEADSTEER_QUICK" not in "".join(str(o) for o in outputs)
    shown = {"quickstart": "gemma-3-270m 18 layers, 4 heads", "which_heads": "18 layers × 4 heads"}  # Gemma 3 270M's
    assert shown.get(path.stem, "") in text


def test_tidy_keeps_streams_as_jupyter_shows_them():
    """Redraws of a progress bar collapse to its last state; a bar that cleared itself and the widget note go."""
    make = generator()
    cell = nbformat.v4.new_code_cell("fit()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="TqdmWarning: IProgress not found. Update jupyter\n"),
        nbformat.v4.new_output("stream", name="stderr", text="fit:  50%|#    | 1/2"),
        nbformat.v4.new_output("stream", name="stderr", text="\rfit: 100%|#####| 2/2"),
        nbformat.v4.new_output("stream", name="stderr", text="\r" + " " * 20 + "\r"),
        nbformat.v4.new_output("stream", name="stdout", text="load:  10%\rload: 100%\nready\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "0.78"}, execution_count=1),
    ]
    nb = nbformat.v4.new_notebook(cells=[cell])
    outputs = make.tidy(nb).cells[0].outputs
    assert [(o.output_type, o.get("text")) for o in outputs] == [
        ("stream", "load: 100%\nready\n"),
        ("execute_result", None),
    ]
    assert make._overwritten("abcdef\rXY") == "XYcdef"


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
