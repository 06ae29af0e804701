"""Write the notebooks from the cell sources below, and run them on the real model to commit their outputs.

    python notebooks/make_notebooks.py            # after editing a cell: rewrite the notebooks whose cells changed
    python notebooks/make_notebooks.py --execute  # run every notebook on Gemma 3 270M and save it with its outputs

Writing keeps a committed notebook (and its outputs) whose cells are unchanged, and writes a
changed one without outputs; ``--execute`` then fills them in (NAME... runs only those). The
committed notebooks carry the outputs of the real default model, so a reader can follow them on
GitHub; the tests run a copy on a tiny model and never write it back.

Every notebook reads two environment variables so the tests can run it small:
HEADSTEER_MODEL (a model name or folder; unset: Gemma 3 270M) and HEADSTEER_QUICK=1 (few steps, few pairs).
"""

import argparse
import ast
import os
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

SETUP = """import os

import headsteer as hs

MODEL = os.environ.get("HEADSTEER_MODEL")  # None: Gemma 3 270M, offline
QUICK = os.environ.get("HEADSTEER_QUICK") == "1"  # the tests run every notebook this way"""

# Figures as interactive plotly in Jupyter, plus a PNG (where a Chromium is installed) that GitHub can show.
FIGURES = """import plotly.io as pio

from headsteer.paper.figures import chromium_found

pio.renderers.default = "plotly_mimetype+png" if chromium_found() else "plotly_mimetype\""""

QUICKSTART = [
    "# headsteer quickstart\n\nLoad the model, fit Δ on 10 antonym pairs at one layer, see which heads it uses, and steer a few words.",
    SETUP,
    """model = hs.load_model(MODEL)
template = hs.get_template("qa")  # "Q: {input}\\nA:" -> " {output}"
task = hs.load_task("builtin/antonym")
train, test = hs.split_task(task, n_train=10, seed=0, max_test=20 if QUICK else 200)
layer = min(4, model.cfg.n_layers - 1)
print(model.cfg.model_name, model.cfg.n_layers, "layers,", model.cfg.n_heads, "heads, d_head", model.cfg.d_head)""",
    "## Fit\n\nγ = λ = 0.01 (the paper's), the sequence loss (every answer token and the stop string), proximal Adam. The result shows its fit and Δ's top heads.",
    """config = hs.FitConfig(layer=layer, steps=5 if QUICK else 50)
result = hs.fit(model, train, template, config, task=task.name)
result""",
    "## Which heads does Δ use?\n\nAt this one layer; `notebooks/which_heads.ipynb` maps every layer, and how stably each head is chosen.",
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

WHICH_HEADS = [
    "# Which heads does my task use?\n\n"
    "A sparse Δ (`hs.fit`) names the heads it uses at one layer, and with 10 examples that choice moves from sample "
    "to sample. A **head map** answers model-wide and says how stably: Δ is fitted at every layer, the penalty "
    "γ = λ is swept down from where no head is on (the λ path: when does each head switch on?), the fits are "
    "repeated on resamples of the training pairs (how often is each head chosen?), and each head's Δ is removed "
    "and applied alone on held-out pairs (what does it do?). Beside it, the function vector's causal score "
    "(Todd et al.'s average indirect effect) of every head. The method and its defaults are in `RESEARCH.md` "
    "(*Which heads*); everything below is `headsteer.heads.maps.head_map` and the plots of its tables.",
    SETUP,
    FIGURES,
    """from headsteer import plots
from headsteer.heads.maps import MapConfig, head_map

model = hs.load_model(MODEL)
template = hs.get_template("qa")
task = hs.load_task("builtin/antonym")  # your own: hs.load_task("pairs.json"), a JSON list of {input, output}
train, test = hs.split_task(task, n_train=10, seed=0, max_test=10 if QUICK else 100)
print(f"{task.name}: {len(train)} training pairs, {len(test)} held-out pairs; {model.cfg.n_layers} layers × {model.cfg.n_heads} heads")""",
    "## The map\n\n"
    "Defaults: Δ at γ = λ = 0.01 at every layer; a λ path of 9 strengths from the largest *entry strength* "
    "(where the first head switches on) down to 0.01; 10 resamples (5 splits of the training pairs into "
    "complementary halves); a head is **stable** when it is chosen in at least 75% of the resamples somewhere "
    "in the top of the path where, on average, at most q_max heads are chosen (Meinshausen & Bühlmann's "
    "stability selection: at most about one falsely stable head). Held-out pairs are only scored, never used "
    "to choose. The time each stage took is at the end of this notebook; map fewer layers "
    "(`MapConfig(layers=(2, 3, 4, 5))`) or fewer resamples to try it faster.",
    """if QUICK:  # the tests: a few steps of everything
    config = MapConfig(fit=hs.FitConfig(steps=3), resamples=2, path_points=2, path_steps=1, fv_top_k=3)
else:
    config = MapConfig()
found = head_map(model, train, test, template, config, task=task.name)
found.summary()""",
    "## Reading the summary\n\n"
    "The summary says which heads are stable, how the stability region was set, how many falsely stable heads "
    "the bound allows, which heads the function vector ranks highest, how the two sets overlap over the "
    "resamples (against the overlap two random sets of those sizes would have), and the layer where Δ scores "
    "best on the held-out pairs.",
    "## Every layer, every head\n\n"
    "From left: ‖Δ_h‖₂ at the chosen penalty; the share of its layer's held-out loss gain that Δ_h keeps alone; "
    "the function vector's average indirect effect (numbers: its top ranks); the selection frequency over "
    "resamples (★ stable); and each layer's held-out first-token accuracy with its Δ against zero-shot.",
    """plots.head_map_heatmaps(found.heads, found.layers, task.name)""",
    "## The heads that are chosen most often\n\n"
    "`switch_on` is the strongest penalty at which the path keeps the head; `entry_strength` the one at which a fit "
    "from Δ = 0 moves it in its first step (from the gradient at zero: one backward pass for the whole model).",
    """columns = ["label", "frequency_max", "stable", "frequency_chosen", "switch_on", "entry_strength", "norm", "sufficiency", "necessity", "fv_rank"]
found.heads.sort_values(["frequency_max", "switch_on"], ascending=False)[columns].head(12).round(3)""",
    "## The λ path with stability bands\n\n"
    "Left: how often the resamples choose each head as the penalty weakens; the shaded band is the stability "
    "region, the dashed line the threshold. Right: ‖Δ_h‖₂ on all training pairs, and the 10–90% band over resamples.",
    """plots.stability_path(found.path.assign(task=task.name), found.stability.region, found.stability.threshold)""",
    "## Δ against the function vector\n\n"
    "Each head: the function vector's rank (right: its top heads) against Δ's selection frequency (up: stable). "
    "Heads in the top-right corner are chosen by both.",
    """plots.delta_vs_fv(found.heads, found.stability.threshold, config.fv_top_k)""",
    """found.fv_overlap[found.fv_overlap["sample"] > 0].describe().loc[["mean", "std", "min", "max"]].round(2)""",
    "## What each head does on held-out pairs\n\n"
    "Necessity: the share of the layer's held-out loss gain lost when Δ_h alone is removed; sufficiency: the share "
    "Δ_h keeps alone. Blank where the layer's Δ does not lower the held-out loss at all.",
    """plots.causal_share_heatmaps(found.heads, task.name)""",
    "## Where the time went",
    """import pandas as pd

pd.Series(found.timings, name="seconds").round(1)""",
    "## Several tasks\n\n"
    "`headsteer heads --task T` saves a task's map in `results/heads/T/`; with several saved, the tasks' maps sit "
    "side by side and their stable heads (and the function vector's top heads) overlap as below.",
    """from pathlib import Path

from headsteer.paper.figures import cross_task_figures
from headsteer.paper.study_files import StudyFiles

studies = sorted(p for p in Path("../results/heads").glob("*") if StudyFiles(p).is_complete())
across = cross_task_figures(studies) if len(studies) > 1 else {}
across.get("heads_task_overlap", "run headsteer heads for two tasks or more first")""",
    """across.get("heads_by_task", "")""",
]

SWEEP = [
    "# Layer sweep (the paper's Figure 1)\n\nFit Δ at every layer for several seeds and plot held-out accuracy against the layer. "
    "The full run is `headsteer sweep --task antonym --layers all --seeds 5 --out results/sweep_antonym.csv` (13 min here); "
    "this notebook runs a small one and then plots the saved full sweep.",
    SETUP,
    FIGURES,
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
    "(Figure 1), the head maps of every task (which heads, how stably, what they do, against the function vector; "
    "and the paper's Figure 2 at one layer), the tasks' maps side by side, and the method comparison. "
    "`headsteer figures` writes the same figures to `figures/` (HTML, PNG, PDF, SVG); the PNGs there are the "
    "static copies of what this notebook draws interactively.",
    """import plotly.io as pio

pio.renderers.default = "plotly_mimetype"  # interactive in Jupyter; static copies are in ../figures""",
    """from pathlib import Path

from headsteer.paper import figures
from headsteer.paper.study_files import StudyFiles

RESULTS = Path("../results")
found = {**figures.sweep_figures(RESULTS), **figures.table_figures(RESULTS)}
studies = sorted(p for p in (RESULTS / "heads").glob("*") if StudyFiles(p).is_complete())
for study in studies:
    found.update(figures.head_figures(study))
if studies:
    found.update(figures.cross_task_figures(studies))
sorted(found)""",
    """for name, fig in found.items():
    fig.show()""",
]


NOTEBOOKS = {
    "quickstart.ipynb": QUICKSTART,
    "which_heads.ipynb": WHICH_HEADS,
    "layer_sweep.ipynb": SWEEP,
    "paper_figures.ipynb": PAPER,
}


def build(cells: list[str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    # Markdown cells start with a heading; code cells never start with "#", and must parse (prose that
    # lost its heading would otherwise become a code cell that fails only when run).
    for cell in cells:
        if not cell.startswith("#"):
            ast.parse(cell)
    nb.cells = [nbformat.v4.new_markdown_cell(c) if c.startswith("#") else nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def write(name: str, cells: list[str]) -> bool:
    """Write ``name`` unless the committed notebook already holds these cells (its outputs are kept); True if written."""
    path = HERE / name
    if path.is_file() and [c.source for c in nbformat.read(path, as_version=4).cells] == cells:
        return False
    nbformat.write(build(cells), path)
    return True


def execute(name: str, timeout: int = 3600) -> None:
    """Run ``name`` top to bottom on the real default model (HEADSTEER_MODEL, HEADSTEER_QUICK unset) and save it."""
    from nbclient import NotebookClient

    for variable in ("HEADSTEER_MODEL", "HEADSTEER_QUICK"):
        os.environ.pop(variable, None)  # the kernel inherits the environment: the real model, full size
    path = HERE / name
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False)
    client.execute(cwd=str(HERE))
    nbformat.write(tidy(nb), path)


# tqdm.auto's note that ipywidgets is missing: progress then prints as text, which is what GitHub can show.
WIDGET_NOTE = "TqdmWarning: IProgress not found"


def tidy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Each cell's streams as Jupyter shows them: one output per stream, progress bars at their last state.

    A text progress bar redraws its line with carriage returns, and the kernel sends every redraw as
    a separate output; stored as sent, a 50-step fit is 100 outputs. Jupyter draws a carriage return
    as "overwrite this line from its start"; so does this, and it drops lines left blank (a bar that
    cleared itself) and the warning that progress bars fall back to text.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs: list[nbformat.NotebookNode] = []
        for output in cell.outputs:
            if (
                output.output_type == "stream"
                and outputs
                and outputs[-1].output_type == "stream"
                and outputs[-1].name == output.name
            ):
                outputs[-1].text += output.text
            else:
                outputs.append(output)
        for output in outputs:
            if output.output_type == "stream":
                lines = [_overwritten(line) for line in output.text.split("\n")]
                kept = [
                    line
                    for line in lines
                    if line.strip() and WIDGET_NOTE not in line and "from .autonotebook import" not in line
                ]
                output.text = "".join(line + "\n" for line in kept)
        cell.outputs = [o for o in outputs if o.output_type != "stream" or o.text]
    return nb


def _overwritten(line: str) -> str:
    """What a terminal shows of ``line`` after its carriage returns: each part overwrites the start of the last."""
    shown = ""
    for part in line.split("\r"):
        shown = part + shown[len(part) :]
    return shown.rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run the notebooks on the real model, saving outputs")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"only these notebooks, of {', '.join(NOTEBOOKS)}")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        parser.error(f"unknown notebooks {unknown}; known: {', '.join(NOTEBOOKS)}")
    for name in args.names or NOTEBOOKS:
        if write(name, NOTEBOOKS[name]):
            print(f"wrote {name} (without outputs)")
        if args.execute:
            execute(name)
            print(f"executed {name} on the real model")


if __name__ == "__main__":
    main()
