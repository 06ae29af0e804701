"""Figures are drawn from saved results only: a tiny head study plus small sweep and table files."""

import os
import shutil
import struct
import subprocess
import sys

import pandas as pd
import pytest

import headsteer as hs
from headsteer import plots
from headsteer.cli import main
from headsteer.paper.figures import build_figures, head_figures
from headsteer.paper.head_study import head_study
from tests.helpers import REPO

QA = hs.get_template("qa")
HAS_BROWSER = any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome"))


@pytest.fixture(scope="module")
def results(gemma_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    task = hs.load_task("builtin/antonym")
    head_study(
        gemma_tiny,
        task,
        QA,
        hs.FitConfig(layer=1, steps=4, lr=0.5),
        root / "heads" / "antonym",
        n_train=6,
        strengths=(1.0, 0.05, 0.0),
        fv_top_k=2,
        progress=False,
    )
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
    study = results / "heads" / "antonym"
    names = {p.name for p in study.iterdir()}
    assert {"regularized.safetensors", "unregularized.json", "heads.csv", "path.csv", "fv_effects.csv"} <= names
    heads = pd.read_csv(study / "heads.csv")
    assert set(heads["variant"]) == {"regularized", "unregularized"} and heads["layer"].eq(1).all()
    assert sorted(pd.read_csv(study / "path.csv")["strength"].unique()) == [0.0, 0.05, 1.0]
    train, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=6, seed=0)
    for variant in ("regularized", "unregularized"):
        record = hs.Intervention.load(study / variant).training
        assert record.pairs == tuple(train) and (record.split_seed, record.n_train) == (0, 6), variant


def test_figures_have_titles_axis_labels_and_the_data(results):
    figs = head_figures(results / "heads" / "antonym")
    heatmap = figs["antonym_head_heatmap"]
    assert [a.text for a in heatmap.layout.annotations] == ["regularized", "unregularized"]
    assert len(heatmap.data) == 2 and len(heatmap.data[0].z) == 4 and "layer 1" in heatmap.layout.title.text
    path = figs["antonym_regularization_path"]
    assert path.layout.xaxis.type == "log" and {tr.name for tr in path.data} == {f"head {h}" for h in range(4)}
    assert "overlap" in figs["antonym_delta_vs_fv_heads"].layout.title.text
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
def test_cli_figures_writes_png(results, tmp_path):
    assert main(["figures", "--results", str(results), "--out", str(tmp_path / "figs")]) == 0
    png = tmp_path / "figs" / "antonym_head_norms.png"
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG header's IHDR
    assert (width, height) == (1600, 900)  # 800 × 450 at scale 2


def test_figures_without_results_say_so(tmp_path, capsys):
    assert main(["figures", "--results", str(tmp_path), "--out", str(tmp_path / "f")]) == 2
    assert "no results to draw" in capsys.readouterr().err


def test_heatmap_grows_with_the_head_count():
    import torch

    small = plots.head_heatmap({"regularized": torch.randn(4, 256)}, 4)
    llama = plots.head_heatmap({"regularized": torch.randn(32, 128), "unregularized": torch.randn(32, 128)}, 4)
    assert len(llama.data[0].y) == 32 and llama.data[0].y[-1] == "head 31"
    assert llama.layout.height >= 2 * 22 * 32 > small.layout.height  # about 22 px per head row


def test_head_share_by_task_has_one_row_per_task_in_shares():
    heads = pd.DataFrame(
        [
            {"task": t, "layer": 4, "head": h, "share": share}
            for t, shares in {"antonym": [0.1, 0.9], "french": [0.5, 0.5]}.items()
            for h, share in enumerate(shares)
        ]
    )
    fig = plots.head_share_by_task(heads)
    assert list(fig.data[0].y) == ["antonym", "french"] and list(fig.data[0].x) == ["L4.H0", "L4.H1"]
    assert fig.data[0].z.tolist() == [[0.1, 0.9], [0.5, 0.5]] and fig.layout.xaxis.title.text


def test_without_a_chromium_the_cli_writes_html_and_says_so_in_one_line(results, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))
    assert main(["figures", "--results", str(results), "--out", str(tmp_path / "figs")]) == 0
    written = {p.suffix for p in (tmp_path / "figs").iterdir()}
    assert ".html" in written and ".png" not in written
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no Chromium found" in notes[0]
