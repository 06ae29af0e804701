"""The artifact: algebra, persistence (strict, atomic, with its training record), refusing a model it does not fit."""

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import headsteer as hs
from headsteer import files
from headsteer.errors import ArtifactError, OutputPathError
from headsteer.files import ArtifactPaths
from headsteer.intervention import check_artifact_output
from headsteer.models import ModelSignature
from headsteer.training_record import TrainingRecord
from tests.helpers import REPO, tiny_bridge
from tests.test_hooks import LAYER, batch, make_iv, run


def trained_iv(model, seed=0):
    """An intervention with every field set, as a fit from a seeded split of builtin/antonym leaves it."""
    task = hs.load_task("builtin/antonym")
    train, _ = hs.split_task(task, n_train=10, seed=seed)
    return hs.Intervention(
        torch.randn(model.cfg.n_heads, model.cfg.d_head, generator=torch.Generator().manual_seed(seed)),
        LAYER,
        ModelSignature.of(model),
        task="antonym",
        template=hs.get_template("qa").to_dict(),
        fit_config=hs.FitConfig(layer=LAYER, seed=seed).to_dict(),
        training=TrainingRecord.of_pairs(train).with_split(task, n_train=10, seed=seed),
    )


def test_save_load_round_trips_every_field(gemma_kinds, tmp_path):
    iv = trained_iv(gemma_kinds)
    tensors, meta = iv.save(tmp_path / "iv")
    assert tensors.name == "iv.safetensors" and meta.name == "iv.json"
    loaded = hs.Intervention.load(tmp_path / "iv", model=gemma_kinds)
    assert torch.equal(loaded.delta, iv.delta)
    for name in ("layer", "model", "task", "template", "fit_config", "training"):
        assert getattr(loaded, name) == getattr(iv, name), name
    assert loaded.training.pairs and loaded.training.split_seed == 0 and loaded.training.n_train == 10
    assert loaded.metadata() == iv.metadata()
    saved = json.loads(meta.read_text())
    assert saved["hook_name"] == f"blocks.{LAYER}.attn.hook_z" and saved["format_version"] == 2
    assert saved["tensors_sha256"] == hashlib.sha256(tensors.read_bytes()).hexdigest()
    assert saved["training"]["task_sha256"] == hs.load_task("builtin/antonym").sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iv.json", "iv.safetensors"], "no temporary file left"


def test_a_hand_made_intervention_round_trips_without_a_record(gemma_tiny, tmp_path):
    iv = make_iv(gemma_tiny)
    iv.save(tmp_path / "iv")
    loaded = hs.Intervention.load(tmp_path / "iv.json")
    assert loaded.training is None and torch.equal(loaded.delta, iv.delta)


def test_load_refuses_a_model_of_another_shape_or_name(gemma_kinds, tmp_path):
    make_iv(gemma_kinds).save(tmp_path / "iv")
    with pytest.raises(hs.ModelMismatchError, match=r"d_head: trained on 12, model has 8"):
        hs.Intervention.load(tmp_path / "iv", model=tiny_bridge("llama"))
    other = tiny_bridge("gemma3", seed=1)
    other.cfg.model_name = "some-other-gemma"
    with pytest.raises(hs.ModelMismatchError, match="name: trained on 'tiny-gemma3'"):
        hs.Intervention.load(tmp_path / "iv", model=other)
    with pytest.raises(hs.ModelMismatchError), make_iv(gemma_kinds).applied(tiny_bridge("gpt2")):
        pass


def test_missing_file_and_wrong_shape_are_named(gemma_tiny, tmp_path):
    with pytest.raises(ArtifactError, match="nothing.safetensors"):
        hs.Intervention.load(tmp_path / "nothing")
    make_iv(gemma_tiny).save(tmp_path / "iv")
    (tmp_path / "iv.json").unlink()
    with pytest.raises(ArtifactError, match=r"iv.json does not exist .* but .*iv.safetensors does"):
        hs.Intervention.load(tmp_path / "iv")
    with pytest.raises(ValueError, match=r"Δ has shape \(3, 12\), expected \[n_heads, d_head\] = \[4, 12\]"):
        hs.Intervention(torch.zeros(3, 12), LAYER, ModelSignature.of(gemma_tiny))
    with pytest.raises(ValueError, match="NaN"):
        hs.Intervention(torch.full((4, 12), float("nan")), LAYER, ModelSignature.of(gemma_tiny))


def test_artifact_paths_accept_either_suffix(tmp_path):
    assert (
        ArtifactPaths.of(tmp_path / "a.json")
        == ArtifactPaths.of(tmp_path / "a")
        == ArtifactPaths.of(tmp_path / "a.safetensors")
    )


def test_sum_and_scale_act_like_their_deltas(gemma_tiny):
    a, b = make_iv(gemma_tiny, seed=1), make_iv(gemma_tiny, seed=2)
    assert torch.equal((a + b).delta, a.delta + b.delta)
    assert torch.equal((2.0 * a).delta, 2 * a.delta) and torch.equal((a * 2).delta, 2 * a.delta)
    tokens = batch(gemma_tiny, "left")
    torch.testing.assert_close(run(gemma_tiny, tokens, [a + b]), run(gemma_tiny, tokens, [a, b]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(run(gemma_tiny, tokens, [a]), run(gemma_tiny, tokens, [2 * a]))


def test_adding_interventions_at_different_layers_is_refused(gemma_tiny):
    a = make_iv(gemma_tiny)
    b = hs.Intervention(a.delta, LAYER + 1, a.model)
    with pytest.raises(ValueError, match="cannot add interventions at layer 1"):
        a + b


def test_repr_names_the_heads(gemma_tiny):
    iv = make_iv(gemma_tiny, head=3)
    assert iv.active_heads() == [3]
    assert "hook='blocks.1.attn.hook_z'" in repr(iv) and "zeros=75%" in repr(iv)


def test_a_sum_records_both_training_sets_and_a_scale_keeps_its_own(gemma_tiny):
    a, b = trained_iv(gemma_tiny, seed=0), trained_iv(gemma_tiny, seed=1)
    assert (a + b).training.pairs == a.training.pairs + b.training.pairs and (a + b).training.split_seed is None
    assert (2 * a).training == a.training
    assert (a + make_iv(gemma_tiny)).training is None


# ---- strict loading: every edited or broken artifact is refused, naming file and field ----------
def _edit_json(change):
    def edit(stem):
        meta = json.loads(stem.with_suffix(".json").read_text())
        change(meta)
        stem.with_suffix(".json").write_text(json.dumps(meta))

    return edit


def _set(key, value):
    return _edit_json(lambda meta: meta.__setitem__(key, value))


def _write_tensors(tensors):
    return lambda stem: save_file(tensors, str(stem.with_suffix(".safetensors")))


def _truncate(suffix, keep):
    def edit(stem):
        path = stem.with_suffix(suffix)
        path.write_bytes(path.read_bytes()[:keep])

    return edit


JSON_CASES = {
    "layer moved away from its hook": (
        _set("layer", 2),
        "field 'layer' is 2 but field 'hook_name' is 'blocks.1.attn.hook_z'",
    ),
    "layer as a string": (_set("layer", "1"), "field 'layer' must be an integer, got \"1\""),
    "layer as a float": (_set("layer", 1.0), "field 'layer' must be an integer, got 1.0"),
    "layer as a bool": (_set("layer", True), "field 'layer' must be an integer, got true"),
    "layer out of range": (
        _edit_json(lambda m: m.update(layer=7, hook_name="blocks.7.attn.hook_z")),
        "field 'layer': layer 7 is out of range",
    ),
    "fit_config at another layer": (
        _edit_json(lambda m: m["fit_config"].update(layer=2)),
        "field 'fit_config.layer' is 2 but field 'layer' is 1",
    ),
    "fit_config with a string": (
        _edit_json(lambda m: m["fit_config"].update(steps="50")),
        "field 'fit_config.steps' must be an integer",
    ),
    "extra JSON key": (_set("note", "hi"), "unexpected key(s) ['note']"),
    "missing JSON key": (_edit_json(lambda m: m.pop("task")), "missing key(s) ['task']"),
    "extra key in template": (
        _edit_json(lambda m: m["template"].update(foo="x")),
        "field 'template': unexpected key(s) ['foo']",
    ),
    "template without its input": (
        _edit_json(lambda m: m["template"].update(prompt="Q:")),
        "field 'template': template 'qa': prompt must contain",
    ),
    "extra key in model": (
        _edit_json(lambda m: m["model"].update(d_vocab=512)),
        "field 'model': unexpected key(s) ['d_vocab']",
    ),
    "model shape as a float": (
        _edit_json(lambda m: m["model"].update(n_heads=4.0)),
        "field 'model.n_heads' must be an integer, got 4.0",
    ),
    "edited training pair": (
        _edit_json(lambda m: m["training"]["pairs"][0].update(input="zzz")),
        "field 'training.pairs_sha256'",
    ),
    "training pair with an extra key": (
        _edit_json(lambda m: m["training"]["pairs"][3].update(note="x")),
        "field 'training.pairs[3]': unexpected key(s) ['note']",
    ),
    "n_train not the number of pairs": (
        _edit_json(lambda m: m["training"].update(n_train=20)),
        "field 'training.n_train' is 20",
    ),
    "unknown format version": (_set("format_version", 3), "field 'format_version' must be one of [1, 2], got 3"),
    "tensor hash edited": (_set("tensors_sha256", "0" * 64), "iv.safetensors does not match"),
    "bad JSON": (_truncate(".json", 40), "not valid JSON"),
    "not an object": (lambda stem: stem.with_suffix(".json").write_text("[1, 2]"), "must hold a JSON object"),
}
TENSOR_CASES = {
    "extra tensor": (
        _write_tensors({"delta": torch.zeros(4, 12), "extra": torch.zeros(1)}),
        "must hold exactly one tensor 'delta', holds ['delta', 'extra']",
    ),
    "missing delta": (
        _write_tensors({"Delta": torch.zeros(4, 12)}),
        "must hold exactly one tensor 'delta', holds ['Delta']",
    ),
    "integer delta": (
        _write_tensors({"delta": torch.zeros(4, 12, dtype=torch.int64)}),
        "tensor 'delta': Δ must be a tensor of a float dtype",
    ),
    "wrong shape": (_write_tensors({"delta": torch.zeros(3, 12)}), r"tensor 'delta': Δ has shape (3, 12)"),
    "NaN in the file": (_write_tensors({"delta": torch.full((4, 12), float("nan"))}), "tensor 'delta': Δ contains NaN"),
    "truncated": (_truncate(".safetensors", 100), "not a readable safetensors file"),
    "another Δ (no matching hash)": (
        _write_tensors({"delta": torch.ones(4, 12)}),
        "iv.safetensors does not match .*iv.json .*'tensors_sha256'.*interrupted or concurrent save",
    ),
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_an_edited_or_broken_json_is_refused_naming_file_and_field(gemma_tiny, tmp_path, case):
    edit, message = JSON_CASES[case]
    trained_iv(gemma_tiny).save(tmp_path / "iv")
    edit(tmp_path / "iv")
    with pytest.raises(ArtifactError) as caught:
        hs.Intervention.load(tmp_path / "iv")
    assert str(tmp_path / "iv") in str(caught.value)
    assert _matches(message, str(caught.value)), str(caught.value)


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_a_broken_tensor_file_is_refused_naming_it(gemma_tiny, tmp_path, case):
    edit, message = TENSOR_CASES[case]
    trained_iv(gemma_tiny).save(tmp_path / "iv")
    edit(tmp_path / "iv")
    with pytest.raises(ArtifactError) as caught:
        hs.Intervention.load(tmp_path / "iv")
    assert str(tmp_path / "iv.safetensors") in str(caught.value)
    assert _matches(message, str(caught.value)), str(caught.value)


def _matches(message, text):
    """Cases spell messages literally, except those with '.*', which are patterns."""
    import re

    return message in text if ".*" not in message else re.search(message, text) is not None


def test_format_1_loads_for_inspection_without_a_record(gemma_tiny, tmp_path):
    trained_iv(gemma_tiny).save(tmp_path / "iv")
    meta = json.loads((tmp_path / "iv.json").read_text())
    del meta["training"], meta["tensors_sha256"]
    (tmp_path / "iv.json").write_text(json.dumps({**meta, "format_version": 1}))
    loaded = hs.Intervention.load(tmp_path / "iv")
    assert loaded.training is None and loaded.layer == LAYER and loaded.template == hs.get_template("qa").to_dict()
    (tmp_path / "iv.json").write_text(json.dumps({**meta, "format_version": 1, "training": None}))
    with pytest.raises(ArtifactError, match=r"iv.json: .*unexpected key\(s\) \['training'\]"):
        hs.Intervention.load(tmp_path / "iv")


# ---- saving: one atomic unit, checked before any write ------------------------------------
def _snapshot(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_a_json_path_that_is_a_directory_writes_nothing(gemma_tiny, tmp_path):
    (tmp_path / "iv.safetensors").write_bytes(b"old")
    (tmp_path / "iv.json").mkdir()
    with pytest.raises(OutputPathError, match="iv.json: is a directory"):
        trained_iv(gemma_tiny).save(tmp_path / "iv")
    assert _snapshot(tmp_path) == {"iv.safetensors": b"old"} and not list((tmp_path / "iv.json").iterdir())


@pytest.mark.parametrize("fail_at", ["write", "rename"])
def test_a_save_that_fails_midway_leaves_the_old_artifact(gemma_tiny, tmp_path, monkeypatch, fail_at):
    trained_iv(gemma_tiny, seed=0).save(tmp_path / "iv")
    before = _snapshot(tmp_path)
    _name, real = {"write": ("_write_temp", files._write_temp), "rename": ("os.replace", os.replace)}[fail_at]
    calls = []

    def second_call_fails(*args):
        calls.append(args)
        if len(calls) == 2:  # the JSON, after the tensor file went through
            raise OSError("disk full")
        return real(*args)

    if fail_at == "write":
        monkeypatch.setattr(files, "_write_temp", second_call_fails)
    else:
        monkeypatch.setattr(files.os, "replace", second_call_fails)
    with pytest.raises(OSError, match="disk full"):
        trained_iv(gemma_tiny, seed=1).save(tmp_path / "iv")
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before, "both files as they were, no temporary file left"
    assert hs.Intervention.load(tmp_path / "iv").training.split_seed == 0


def test_a_save_that_fails_midway_removes_what_it_created(gemma_tiny, tmp_path, monkeypatch):
    real, calls = os.replace, []

    def second_call_fails(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(files.os, "replace", second_call_fails)
    with pytest.raises(OSError):
        trained_iv(gemma_tiny).save(tmp_path / "iv")
    assert not list(tmp_path.iterdir())


def test_an_in_place_edit_is_refused_by_save_before_any_write(gemma_tiny, tmp_path):
    iv = trained_iv(gemma_tiny)
    iv.delta[0, 0] = float("nan")
    with pytest.raises(ArtifactError, match="NaN"):
        iv.save(tmp_path / "iv")
    iv = trained_iv(gemma_tiny)
    iv.fit_config["layer"] = 2
    with pytest.raises(ArtifactError, match="field 'fit_config.layer' is 2 but field 'layer' is 1"):
        iv.save(tmp_path / "iv")
    assert not list(tmp_path.iterdir())


def test_check_artifact_output_refuses_unwritable_stems_and_creates_nothing(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(OutputPathError, match="--out .*runs/: ends with a path separator"):
        check_artifact_output(f"{tmp_path / 'runs'}/")
    with pytest.raises(OutputPathError, match="--stem .*runs: is a directory"):
        check_artifact_output(tmp_path / "runs", flag="--stem")
    (tmp_path / "runs" / "x.history.csv").mkdir()
    with pytest.raises(OutputPathError, match=r"x.history.csv: is a directory"):
        check_artifact_output(tmp_path / "runs" / "x.json")
    with pytest.raises(OutputPathError, match="intervention path .*runs: is a directory"):
        make_iv(tiny_bridge("gemma3")).save(tmp_path / "runs")
    paths = check_artifact_output(tmp_path / "new" / "deeper" / "x")
    assert paths.meta == tmp_path / "new" / "deeper" / "x.json" and not (tmp_path / "new").exists()


HEAD_MAP_DELTAS = sorted(REPO.glob("results/heads/*/interventions/seed*/*.json"))  # StudyFiles.intervention's layout


@pytest.mark.parametrize("meta", HEAD_MAP_DELTAS, ids=lambda p: f"{p.parents[2].name}/{p.stem}")
def test_committed_head_map_interventions_record_their_split(meta):
    iv = hs.Intervention.load(meta)
    assert iv.training is not None and (iv.training.split_seed, iv.training.n_train) == (0, 10)
    assert len(iv.training.pairs) == 10 and iv.task == meta.parents[2].name


def test_the_committed_head_maps_have_their_deltas():
    """The glob above finds every committed map's Δ's (a layout change would otherwise test nothing)."""
    maps = sorted(REPO.glob("results/heads/*/stability.json"))
    assert {p.parents[2].name for p in HEAD_MAP_DELTAS} == {p.parent.name for p in maps}
