"""The real default model, Gemma 3 270M from the PyPI GGUF (offline; converted once, then cached)."""

import pytest

import headsteer as hs

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def gemma():
    return hs.load_model()


def test_default_model_shape_and_hooks(gemma):
    cfg = gemma.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model) == (18, 4, 256, 640)
    assert cfg.model_name == hs.DEFAULT_MODEL


def test_short_fit_beats_zero_shot_on_held_out_antonyms(gemma):
    task = hs.load_task("builtin/antonym")
    train, test = hs.split_task(task, n_train=10, seed=0)
    template = hs.get_template("qa")
    result = hs.fit(gemma, train, template, hs.FitConfig(layer=4), task=task.name, progress=False)
    zero = hs.summarize(hs.evaluate_pairs(gemma, test, template, (), progress=False))
    fitted = hs.summarize(hs.evaluate_pairs(gemma, test, template, [result.intervention], progress=False))
    assert result.history["task_loss"].iloc[-1] < 0.5 * result.history["task_loss"].iloc[0]
    assert fitted["first_token"] >= zero["first_token"] + 0.15, (zero, fitted)


def test_fast_and_naive_fits_agree_on_the_real_model(gemma):
    from headsteer.forward import naive_scored_logits

    train, _ = hs.split_task(hs.load_task("builtin/english-french"), n_train=10, seed=1)
    template, config = hs.get_template("qa"), hs.FitConfig(layer=4, steps=4)
    naive = hs.fit(gemma, train, template, config, forward=naive_scored_logits, progress=False)
    fast = hs.fit(gemma, train, template, config, progress=False)
    for column in ("objective", "task_loss"):
        assert fast.history[column].tolist() == pytest.approx(naive.history[column].tolist(), rel=1e-4, abs=1e-4)
