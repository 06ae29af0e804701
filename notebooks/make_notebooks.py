"""Write the notebooks from the cell sources below (run after editing: python notebooks/make_notebooks.py).

Every notebook reads two environment variables so the tests can run it small:
HEADSTEER_MODEL (a model name or folder; unset: Gemma 3 270M) and HEADSTEER_QUICK=1 (few steps, few pairs).
"""

from pathlib import Path

import nbformat

SETUP = """import os

import headsteer as hs

MODEL = os.environ.get("HEADSTEER_MODEL")  # None: Gemma 3 270M, offline
QUICK = os.environ.get("HEADSTEER_QUICK") == "1"  # the tests run every notebook this way"""

QUICKSTART = [
    "# headsteer quickstart\n\nLoad the model, fit Δ on 10 antonym pairs at one layer, see which heads it uses, and steer a few words.",
    SETUP,
    """model = hs.load_model(MODEL)
template = hs.get_template("qa")  # "Q: {input}\\nA:" -> " {output}"
task = hs.load_task("builtin/antonym")
train, test = hs.split_task(task, n_train=10, seed=0, max_test=20 if QUICK else 200)
layer = min(4, model.cfg.n_layers - 1)
print(model.cfg.model_name, model.cfg.n_layers, "layers,", model.cfg.n_heads, "heads, d_head", model.cfg.d_head)""",
    "## Fit\n\nγ = λ = 0.01 (the paper's), first-token NLL, proximal Adam. The result shows its fit and Δ's top heads.",
    """config = hs.FitConfig(layer=layer, steps=5 if QUICK else 50)
result = hs.fit(model, train, template, config, task=task.name)
result""",
    "## Which heads does Δ use?",
    """result.head_norms().sort_values("norm", ascending=False)""",
    "## Steer a few words\n\nThe same prompts without and with Δ (added at the last prompt token only).",
    """words = [p.input for p in test[:8]]
tokens = hs.encode_prompts(model.tokenizer, template, words)
before = hs.greedy_generate(model, tokens)
after = hs.greedy_generate(model, tokens, [result.intervention])
import pandas as pd

pd.DataFrame({"input": words, "target": [p.output for p in test[:8]], "zero-shot": before, "with Δ": after})""",
    "## Score held-out pairs",
    """scores = hs.evaluate_pairs(model, test, template, [result.intervention], progress=False)
baseline = hs.evaluate_pairs(model, test, template, [], progress=False)
pd.DataFrame([hs.summarize(baseline), hs.summarize(scores)], index=["zero-shot", "with Δ"])""",
    "## Save and load\n\nsafetensors + JSON; loading with a model refuses one Δ does not fit.",
    """import tempfile

path = tempfile.mkdtemp() + "/antonym"
result.intervention.save(path)
hs.Intervention.load(path, model=model)""",
]

SWEEP = [
    "# Layer sweep (the paper's Figure 1)\n\nFit Δ at every layer for several seeds and plot held-out accuracy against the layer. "
    "The full run is `headsteer sweep --task antonym --layers all --seeds 5 --out results/sweep_antonym.csv` (13 min here); "
    "this notebook runs a small one and then plots the saved full sweep.",
    SETUP,
    """import tempfile
from pathlib import Path

import pandas as pd

from headsteer import plots
from headsteer.paper.sweep import sweep

model = hs.load_model(MODEL)
task = hs.load_task("builtin/antonym")
layers = [0, 1] if QUICK else list(range(0, model.cfg.n_layers, 3))
config = hs.FitConfig(steps=3 if QUICK else 50)
small = sweep(model, task, hs.get_template("qa"), layers, [0, 1], config, n_train=10, max_test=10 if QUICK else 40,
              out=Path(tempfile.mkdtemp()) / "sweep.csv")
small.head()""",
    """plots.layer_sweep(small, "first_token")""",
    "## The saved full sweep (Gemma 3 270M, antonym, 18 layers × 5 seeds)",
    '''saved = Path("../results/sweep_antonym.csv")
plots.layer_sweep(pd.read_csv(saved), "exact_match") if saved.is_file() else "run the sweep command above first"''',
]

PAPER = [
    "# Paper figures\n\nEvery figure from the saved results in `../results` (nothing is trained here): the layer sweep "
    "(Figure 1), the head heatmap and head norms (Figure 2), the regularization path, Δ's heads against the function "
    "vector's, and the method comparison. `headsteer figures` writes the same figures to `figures/`.",
    """from pathlib import Path

from headsteer.paper import figures

RESULTS = Path("../results")
found = {**figures.sweep_figures(RESULTS), **figures.table_figures(RESULTS)}
for study in sorted((RESULTS / "heads").glob("*")):
    found.update(figures.head_figures(study))
sorted(found)""",
    """for name, fig in found.items():
    fig.show()""",
]


def write(name: str, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    # Markdown cells start with a heading; code cells never start with "#".
    nb.cells = [nbformat.v4.new_markdown_cell(c) if c.startswith("#") else nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, Path(__file__).with_name(name))


NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "layer_sweep.ipynb": SWEEP, "paper_figures.ipynb": PAPER}

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        write(name, cells)
