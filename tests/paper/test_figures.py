"""Figures are drawn from saved results only: tiny head maps of two tasks plus small sweep and table files."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import headsteer as hs
from headsteer import plots
from headsteer.cli import main
from headsteer.heads.maps import MapConfig
from headsteer.paper.figures import build_figures, chromium_found, head_figures
from headsteer.paper.head_study import head_study
from headsteer.paper.study_files import TABLES, StudyFiles
from tests.helpers import REPO

QA = hs.get_template("qa")
HAS_BROWSER = chromium_found()
MAP = MapConfig(
    fit=hs.FitConfig(steps=4, lr=0.5, gamma=0.05, lam=0.05),
    resamples=4,
    path_points=3,
    path_steps=2,
    fv_top_k=3,
    unregularized_layer=1,
)


@pytest.fixture(scope="module")
def results(gemma_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    for name, seeds in (("antonym", (0, 1)), ("english-french", (0,))):
        task = hs.load_task(f"builtin/{name}")
        head_study(gemma_tiny, task, QA, MAP, root / "heads" / name, seeds, n_train=6, max_test=8, progress=False)
    sweep = pd.DataFrame(
        [
            {
                "task": "antonym",
                "layer": layer,
                "seed": seed,
                "first_token": 0.1 * layer + 0.01 * seed,
                "exact_match": 0.1 * layer,
                "zero_shot_first_token": 0.0,
                "zero_shot_exact_match": 0.0,
            }
            for layer in range(3)
            for seed in range(2)
        ]
    )
    sweep.to_csv(root / "sweep_antonym.csv", index=False)
    table = pd.DataFrame(
        [
            {"task": t, "method": m, "seed": s, "first_token": 0.2, "exact_match": 0.1 + 0.1 * s}
            for t in ("antonym", "synonym")
            for m in ("0-shot", "Δ (ours)")
            for s in (0, 1)
        ]
    )
    table.to_csv(root / "table.csv", index=False)
    table.assign(task="fr∘antonym", method="Ours (Add)").to_csv(root / "compose.csv", index=False)
    opinions = pd.DataFrame(
        [
            {"task": g, "method": m, "seed": s, "kl": 0.1 * (1 + s) + (0.2 if g == "South" else 0)}
            for g in ("Northeast", "South")
            for m in ("uniform", "Δ (ours)")
            for s in (0, 1)
        ]
    )
    opinions.to_csv(root / "opinion.csv", index=False)
    return root


def test_head_study_writes_every_result(results):
    files = StudyFiles(results / "heads" / "antonym")
    assert files.is_complete() and all(files.table(name).is_file() for name in TABLES)
    heads = pd.read_csv(files.table("heads"))
    assert heads.groupby("seed").size().tolist() == [12, 12] and set(heads["layer"]) == {0, 1, 2}
    assert set(pd.read_csv(files.table("path"))["sample"]) == set(range(5))
    record = json.loads(files.stability.read_text())
    assert set(record["seeds"]) == {"0", "1"} and record["settings"]["map_config"]["resamples"] == 4
    assert record["seeds"]["0"]["stable"] == [
        f"L{r.layer}.H{r.head}" for r in heads[heads["seed"].eq(0) & heads["stable"]].itertuples()
    ]
    for seed in (0, 1):
        train, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=6, seed=seed)
        for layer in range(3):
            record = hs.Intervention.load(files.intervention(seed, layer, "regularized")).training
            assert record.pairs == tuple(train) and (record.split_seed, record.n_train) == (seed, 6)
        unregularized = hs.Intervention.load(files.intervention(seed, 1, "unregularized"))
        assert unregularized.layer == 1 and unregularized.fit_config["gamma"] == 0.0
    assert not (files.folder / "interventions" / "seed0" / "layer00_unregularized.json").exists()


def test_figures_have_titles_axis_labels_and_the_data(results):
    figs = head_figures(results / "heads" / "antonym")
    heatmap = figs["antonym_head_heatmap"]
    assert [a.text for a in heatmap.layout.annotations] == ["regularized", "unregularized"]
    assert len(heatmap.data) == 2 and len(heatmap.data[0].z) == 4 and "layer 1" in heatmap.layout.title.text
    path = figs["antonym_regularization_path"]
    assert path.layout.xaxis.type == "log" and {tr.name for tr in path.data} <= {f"head {h}" for h in range(4)}
    head_map = figs["antonym_head_map"]
    heads = pd.read_csv(results / "heads" / "antonym" / "heads.csv")
    mean_norm = heads.groupby(["layer", "head"])["norm"].mean().unstack().to_numpy()
    assert [tr.type for tr in head_map.data[:4]] == ["heatmap"] * 4 and len(head_map.data[0].z) == 3
    np.testing.assert_allclose(head_map.data[0].z, mean_norm)  # both seeds, averaged
    stability = figs["antonym_stability_path"]
    assert stability.layout.xaxis.type == "log" and stability.data
    assert "function vector" in figs["antonym_delta_vs_fv"].layout.title.text
    sweep = plots.layer_sweep(pd.read_csv(results / "sweep_antonym.csv"), "first_token")
    fitted = next(tr for tr in sweep.data if tr.name == "antonym: fitted Δ")
    assert list(fitted.y) == pytest.approx([0.005, 0.105, 0.205]) and "2 seeds" in sweep.layout.title.text
    bars = plots.method_bars(pd.read_csv(results / "table.csv"), ["0-shot", "Δ (ours)"])
    assert [b.name for b in bars.data] == ["0-shot", "Δ (ours)"] and list(bars.data[0].error_y.array) == pytest.approx(
        [0.0707, 0.0707], abs=1e-4
    )
    for fig in [*figs.values(), sweep, bars]:
        assert fig.layout.title.text and fig.layout.yaxis.title.text


def test_build_figures_writes_html_without_static(results, tmp_path):
    written = build_figures(results, tmp_path / "figs", static=False)
    names = {p.name for p in written}
    assert "layer_sweep_exact_match.html" in names and "methods_first_token.html" in names
    assert "antonym_head_heatmap.html" in names and (tmp_path / "figs" / "plotly.min.js").is_file()
    assert {"compose_exact_match.html", "compose_first_token.html", "opinion_kl.html", "heads_by_task.html"} <= names
    assert {"antonym_head_map.html", "english-french_stability_path.html", "heads_task_overlap.html"} <= names


def test_regenerating_a_figure_rewrites_the_same_bytes(results, tmp_path):
    first = {p.name: p.read_bytes() for p in build_figures(results, tmp_path / "a", static=False)}
    second = {p.name: p.read_bytes() for p in build_figures(results, tmp_path / "b", static=False)}
    assert first == second and 'id="antonym_head_norms"' in first["antonym_head_norms.html"].decode()


def test_method_bars_follow_the_tables_method_order_not_the_files(results, tmp_path):
    from headsteer.paper.figures import table_figures

    rows = pd.read_csv(results / "table.csv")
    rows.iloc[::-1].to_csv(tmp_path / "table.csv", index=False)  # "Δ (ours)" rows now come first
    bars = table_figures(tmp_path)["methods_exact_match"]
    assert [b.name for b in bars.data] == ["0-shot", "Δ (ours)"]


def test_figures_import_no_experiment_or_baseline():
    """The figures read method names (paper.methods), not the experiments that run them."""
    code = "import sys, headsteer.paper.figures; print(sorted(m for m in sys.modules if m.startswith('headsteer.')))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's headsteer
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    for heavy in ("paper.table", "paper.composition", "paper.opinion", "paper.head_study", "baselines"):
        assert f"'headsteer.{heavy}" not in loaded, heavy


def test_opinion_bars_show_each_group_and_their_average(results):
    from headsteer.paper.figures import table_figures

    fig = table_figures(results)["opinion_kl"]
    delta = next(b for b in fig.data if b.name == "Δ (ours)")
    assert list(delta.x) == ["Northeast", "South", "average"] and list(delta.y) == pytest.approx([0.15, 0.35, 0.25])
    assert fig.layout.xaxis.title.text == "group" and "KL" in fig.layout.yaxis.title.text


@pytest.mark.skipif(not HAS_BROWSER, reason="static export needs a Chromium (apt-get install chromium)")
def test_cli_figures_writes_png_pdf_and_svg_at_the_figures_size(results, tmp_path):
    assert main(["figures", "--results", str(results), "--out", str(tmp_path / "figs")]) == 0
    figs = tmp_path / "figs"
    width, height = struct.unpack(">II", (figs / "antonym_head_norms.png").read_bytes()[16:24])  # the IHDR
    assert (width, height) == (1600, 900)  # 800 × 450 at scale 2: each figure's own size, not plotly's default
    for stem in ("antonym_head_map", "heads_task_overlap", "layer_sweep_exact_match"):
        assert (figs / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
        svg = (figs / f"{stem}.svg").read_text(encoding="utf-8")
        assert svg.lstrip().startswith("<svg") and "</svg>" in svg


def test_figures_without_results_say_so(tmp_path, capsys):
    assert main(["figures", "--results", str(tmp_path), "--out", str(tmp_path / "f")]) == 2
    assert "no results to draw" in capsys.readouterr().err


def test_heatmap_grows_with_the_head_count():
    import torch

    small = plots.head_heatmap({"regularized": torch.randn(4, 256)}, 4)
    llama = plots.head_heatmap({"regularized": torch.randn(32, 128), "unregularized": torch.randn(32, 128)}, 4)
    assert len(llama.data[0].y) == 32 and llama.data[0].y[-1] == "head 31"
    assert llama.layout.height >= 2 * 22 * 32 > small.layout.height  # about 22 px per head row


def test_cross_task_figures_keep_a_task_without_stable_heads(results):
    from headsteer.paper.figures import cross_task_figures

    studies = [results / "heads" / "antonym", results / "heads" / "english-french"]
    overlap = cross_task_figures(studies)["heads_task_overlap"]
    stable, fv = overlap.data
    assert len(stable.x) == len(fv.x) == 2  # both tasks, even one with no stable head
    assert fv.z[0][0] == 1.0 and overlap.layout.annotations[0].text.startswith("Δ")
    by_task = cross_task_figures(studies)["heads_by_task"]
    assert list(by_task.data[0].y) == ["builtin/antonym", "builtin/english-french"] and len(by_task.data[0].x) == 12


def test_without_a_chromium_the_cli_writes_html_and_says_so_in_one_line(results, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))
    assert main(["figures", "--results", str(results), "--out", str(tmp_path / "figs")]) == 0
    written = {p.suffix for p in (tmp_path / "figs").iterdir()}
    assert ".html" in written and ".png" not in written
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no Chromium found" in notes[0]
