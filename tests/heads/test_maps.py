"""The model-wide head map: a planted head is found stably, a loud decoy is not; held-out pairs choose nothing."""

import pandas as pd
import pytest

import headsteer as hs
from headsteer.errors import ConfigError
from headsteer.heads.maps import MapConfig, head_map
from tests.heads.planted import DECOY, LAYER, PLANTED, QA, output_norm, planted_gpt2

TASK = hs.load_task("builtin/antonym")
TRAIN, TEST = hs.split_task(TASK, n_train=10, seed=0, max_test=20)
CONFIG = MapConfig(
    fit=hs.FitConfig(steps=20, lr=0.3), resamples=10, path_points=6, path_steps=4, path_lr=0.1, fv_top_k=3
)


@pytest.fixture(scope="module")
def planted():
    model = planted_gpt2(TRAIN)
    return model, head_map(model, TRAIN, TEST, QA, CONFIG, task="antonym", progress=False)


def test_the_planted_head_is_stable_and_the_decoy_never_selected(planted):
    model, found = planted
    assert output_norm(model, TRAIN, DECOY) == pytest.approx(output_norm(model, TRAIN, PLANTED), rel=1e-4)
    heads = found.heads.set_index(["layer", "head"])
    assert heads.loc[(LAYER, PLANTED), "frequency_max"] >= 0.9 and heads.loc[(LAYER, PLANTED), "stable"]
    assert found.stable == {(LAYER, PLANTED)} and found.stability.region
    assert heads.loc[(LAYER, DECOY), "frequency_max"] < CONFIG.threshold
    assert heads.loc[(LAYER, DECOY), "frequency_chosen"] == 0 and heads.loc[(LAYER, DECOY), "norm"] == 0
    assert heads["entry_strength"].idxmax() == (LAYER, PLANTED) and heads["switch_on"].idxmax() == (LAYER, PLANTED)
    assert heads.loc[(LAYER, DECOY), "entry_strength"] < 1e-6  # inert: its gradient is zero


def test_the_map_tables_hold_every_head_and_layer(planted):
    model, found = planted
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    assert len(found.heads) == n_layers * n_heads and list(found.layers["layer"]) == list(range(n_layers))
    assert found.heads["fv_rank"].sort_values().tolist() == list(range(1, n_layers * n_heads + 1))
    assert found.heads["fv_top"].sum() == CONFIG.fv_top_k and len(found.fv_top) == CONFIG.fv_top_k
    assert set(found.path["sample"]) == set(range(CONFIG.resamples + 1))
    assert found.path["strength"].min() == CONFIG.chosen and found.layers["n_test"].eq(len(TEST)).all()
    assert set(found.fv_effects["sample"]) == set(range(CONFIG.resamples + 1))
    assert len(found.regularized) == n_layers and found.unregularized == ()  # layer 4 is not mapped here
    summary = found.summary().set_index("item")["value"]
    assert summary["stable heads"] == f"L{LAYER}.H{PLANTED}"


def test_held_out_pairs_choose_nothing(planted):
    """Other held-out pairs change the reported scores only: the fits, path and stable set stay."""
    model, found = planted
    other = head_map(model, TRAIN, TEST[:7], QA, CONFIG, task="antonym", progress=False)
    pd.testing.assert_frame_equal(other.path, found.path)
    pd.testing.assert_frame_equal(other.fv_effects, found.fv_effects)
    assert other.stable == found.stable and other.stability.region == found.stability.region
    assert not other.layers["loss"].equals(found.layers["loss"])


def test_map_configs_and_splits_that_cannot_work_are_refused(gemma_tiny):
    with pytest.raises(ConfigError, match="γ = λ > 0"):
        MapConfig(fit=hs.FitConfig(gamma=0.01, lam=0.02))
    with pytest.raises(ConfigError, match="γ = λ > 0"):
        MapConfig(fit=hs.FitConfig(gamma=0.0, lam=0.0))
    with pytest.raises(ConfigError, match="exact zeros"):
        MapConfig(fit=hs.FitConfig(optimizer="adam"))
    with pytest.raises(ConfigError, match="must be even"):
        MapConfig(resamples=5)
    with pytest.raises(ConfigError, match="threshold"):
        MapConfig(threshold=0.5)
    with pytest.raises(ConfigError, match="strengths must fall"):
        MapConfig(strengths=(0.1, 0.2))
    with pytest.raises(ConfigError, match="share inputs"):
        head_map(gemma_tiny, TRAIN, TRAIN[:2], QA, CONFIG, progress=False)
    with pytest.raises(ConfigError, match="3 distinct pairs per resample"):
        head_map(gemma_tiny, TRAIN[:4], TEST, QA, CONFIG, progress=False)


def test_the_bootstrap_finds_the_planted_head_too(planted):
    model, _ = planted
    config = MapConfig(
        fit=CONFIG.fit, resamples=6, resampling="bootstrap", path_points=6, path_steps=4, path_lr=0.1, resample_fv=False
    )
    found = head_map(model, TRAIN, TEST, QA, config, task="antonym", progress=False)
    assert found.stable == {(LAYER, PLANTED)} and set(found.fv_effects["sample"]) == {0}
