"""Every notebook runs top to bottom, headless, on a tiny model (HEADSTEER_QUICK=1), so none can rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import save_tiny_model

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model("gemma3", tmp_path_factory.mktemp("nbmodel"))


def test_the_three_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "layer_sweep.ipynb", "paper_figures.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HEADSTEER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("HEADSTEER_QUICK", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(
        "text/html" in o.get("data", {}) or "application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs
    )
