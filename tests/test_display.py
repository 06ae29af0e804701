"""Notebook summaries: an intervention and a fit result show where Δ lives, its sparsity and top heads."""

import torch
from IPython.core.interactiveshell import InteractiveShell

import headsteer as hs
from headsteer import display

SIGNATURE = hs.ModelSignature(name="toy<model>", n_layers=3, n_heads=4, d_head=2, d_model=8)


def test_intervention_html_names_layer_shape_sparsity_and_top_heads():
    iv = hs.Intervention(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [0.0, 0.0]]), 2, SIGNATURE, "antonym")
    text = display.intervention_html(iv)
    assert "blocks.2.attn.hook_z" in text and "[4 heads × 2]" in text and "62.5% of entries" in text
    assert "2 of 4: [1, 2]" in text and "toy&lt;model&gt;" in text  # escaped
    assert text.index("head 1<") < text.index("head 2<") < text.index("head 0<")  # by norm, largest first


def test_fit_result_html_shows_the_fit_and_its_intervention(gemma_tiny):
    train, _ = hs.split_task(hs.load_task("builtin/antonym"), n_train=4, seed=0)
    result = hs.fit(gemma_tiny, train, hs.get_template("qa"), hs.FitConfig(layer=1, steps=3), progress=False)
    text = display.fit_result_html(result)
    first, last = result.history["objective"].iloc[[0, -1]]
    assert f"{first:.4g} → {last:.4g}" in text and "prox_adam, 3 steps" in text and "Intervention" in text


def test_jupyter_shows_interventions_and_fit_results_as_html():
    """Registered with IPython's HTML formatter (the core types carry no display code)."""
    iv = hs.Intervention(torch.ones(4, 2), 2, SIGNATURE, "antonym")
    formatter = InteractiveShell.instance().display_formatter.formatters["text/html"]
    assert formatter(iv) is None or "blocks.2.attn.hook_z" not in formatter(iv)  # not registered yet in a fresh shell
    assert display.register()
    assert formatter(iv) == display.intervention_html(iv)
