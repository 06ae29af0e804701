"""The catalogue of bad inputs tried against the command line, and what a user sees for each.

Each :class:`Probe` sets up files in a scratch folder, runs ``headsteer ...``
in-process on a tiny model, and names the text its one-line error must hold.
``tests/cli/test_bad_inputs.py`` runs every probe; this module also renders them
as ``docs/bad-inputs.md`` (with scratch paths shown as ``<tmp>``):

    python -m tests.cli.bad_inputs docs/bad-inputs.md
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub.constants

from headsteer.cli import main
from headsteer.files import ArtifactPaths
from tests.helpers import REPO, save_tiny_model


@dataclass(frozen=True)
class Probe:
    """One bad input: what was tried, the command (``{tmp}`` and ``{model}`` filled in), the text its error must hold."""

    what: str
    argv: list[str]
    expect: str
    setup: Callable[[Path], None] = field(default=lambda tmp: None)
    env: dict[str, str] = field(default_factory=dict)


def _write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def _edit_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Copy the fitted intervention to ``<tmp>/edited`` and change its JSON."""

    def setup(tmp: Path) -> None:
        source, target = ArtifactPaths.of(tmp / "iv"), ArtifactPaths.of(tmp / "edited")
        target.tensors.write_bytes(source.tensors.read_bytes())
        meta = json.loads(source.meta.read_text())
        change(meta)
        target.meta.write_text(json.dumps(meta))

    return setup


def _edit_tensors(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        source, target = ArtifactPaths.of(tmp / "iv"), ArtifactPaths.of(tmp / "edited")
        target.tensors.write_bytes(change(source.tensors.read_bytes()))
        target.meta.write_bytes(source.meta.read_bytes())

    return setup


def _sweep_then(setup: Callable[[Path], None], task: list[str] | None = None) -> Callable[[Path], None]:
    """A finished one-cell sweep into ``<tmp>/s.csv`` (the probe's flags but for its own), then ``setup``."""

    def run(tmp: Path) -> None:
        setup(tmp)
        argv = [
            "sweep",
            "--model",
            str(tmp.parent / "model"),
            *(task or ["--task", "builtin/antonym"]),
            "--layers",
            "0",
            "--seeds",
            "1",
            "--steps",
            "1",
            "--max-test",
            "2",
            "--out",
            str(tmp / "s.csv"),
        ]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main([a.replace("{tmp}", str(tmp)) for a in argv]) == 0

    return run


def _antonym_twice(tmp: Path) -> None:
    """``a/antonym.json``: the built-in antonyms; ``b/antonym.json``: French pairs under the same name."""
    data = REPO / "headsteer" / "data"
    for folder, source in (("a", "antonym.json"), ("b", "english-french.json")):
        (tmp / folder).mkdir()
        (tmp / folder / "antonym.json").write_bytes((data / source).read_bytes())


def command(name: str, base: dict[str, str], **flags: str) -> list[str]:
    """``headsteer NAME`` with ``base``'s flags, each overridden or added by ``flags`` (``max_test`` is ``--max-test``)."""
    merged = {**base, **{"--" + k.replace("_", "-"): v for k, v in flags.items()}}
    return [name, *(x for item in merged.items() for x in item)]


FIT_FLAGS = {
    "--model": "{model}",
    "--task": "builtin/antonym",
    "--layer": "1",
    "--steps": "1",
    "--max-test": "4",
    "--out": "{tmp}/x",
}
SWEEP_FLAGS = {
    "--model": "{model}",
    "--task": "builtin/antonym",
    "--layers": "0",
    "--seeds": "1",
    "--steps": "1",
    "--max-test": "2",
    "--out": "{tmp}/s.csv",
}
COMPARE_FLAGS = {
    "--model": "{model}",
    "--task": "builtin/antonym",
    "--layer": "1",
    "--seeds": "1",
    "--steps": "1",
    "--max-test": "2",
    "--out": "{tmp}/c.csv",
}
HEADS_FLAGS = {
    "--model": "{model}",
    "--task": "builtin/antonym",
    "--layers": "0-1",
    "--steps": "1",
    "--resamples": "2",
    "--max-test": "2",
    "--out": "{tmp}/heads",
}
EVAL_FLAGS = {"--model": "{model}", "--task": "builtin/antonym", "--intervention": "{tmp}/edited"}
FIT_CMD = command("fit", FIT_FLAGS)


def fit(**flags: str) -> list[str]:
    return command("fit", FIT_FLAGS, **flags)


def sweep(**flags: str) -> list[str]:
    return command("sweep", SWEEP_FLAGS, **flags)


def compare(**flags: str) -> list[str]:
    return command("compare", COMPARE_FLAGS, **flags)


def heads(**flags: str) -> list[str]:
    return command("heads", HEADS_FLAGS, **flags)


EVAL = command("eval", EVAL_FLAGS)

PROBES: list[Probe] = [
    # ---- flags ------------------------------------------------------------------------------
    Probe("a negative count", fit(max_test="-1"), "--max-test"),
    Probe("zero seeds", sweep(seeds="0"), "--seeds"),
    Probe(
        "a list of seeds, as compare once took (--seeds N is a count: seeds 0..N-1)",
        [*command("compare", {k: v for k, v in COMPARE_FLAGS.items() if k != "--seeds"}), "--seeds", "0", "1", "2"],
        "--seeds",
    ),
    Probe("a layer twice", sweep(layers="0,0"), "--layers"),
    Probe("a reversed range", sweep(layers="5-2"), "--layers"),
    Probe("not a layer list", sweep(layers="x"), "--layers"),
    Probe("Ray workers without --ray", sweep(ray_workers="2"), "--ray-workers needs --ray"),
    Probe("Ray threads without --ray", sweep(ray_threads="2"), "--ray-threads needs --ray"),
    Probe("no Ray worker", [*sweep(ray_workers="0"), "--ray"], "--ray-workers"),
    Probe("a --device beside --ray (each worker takes its own GPU)", [*sweep(device="cuda"), "--ray"], "with --ray"),
    Probe("a layer the model does not have", fit(layer="99"), "layer 99"),
    Probe("an unknown template", fit(template="nope"), "--template"),
    Probe("the opinion loss on word pairs", fit(loss="option_kl"), "--loss"),
    Probe("no training pairs", fit(n_train="0"), "--n-train"),
    Probe("more training pairs than the task has", fit(n_train="70"), "n_train=70"),
    Probe("a head map with γ ≠ λ (its path is in γ = λ)", heads(gamma="0.01", lam="0.02"), "γ = λ > 0"),
    Probe("a head map without penalty", heads(gamma="0", lam="0"), "γ = λ > 0"),
    Probe("a head map with Adam (no exact zeros to count)", heads(optimizer="adam"), "exact zeros"),
    Probe("an odd number of complementary halves", heads(resamples="3"), "must be even"),
    Probe("a stability threshold of one half or less", heads(threshold="0.5"), "threshold"),
    Probe("a λ path that rises", [*heads(), "--strengths", "0.05", "0.1"], "strengths must fall"),
    Probe("halves too small for the function vector", heads(n_train="4"), "3 distinct pairs per resample"),
    Probe("a dtype headsteer does not run in", fit(dtype="float64"), "--dtype"),
    Probe("a device torch does not know", fit(device="gpu"), "device 'gpu' is not a torch device"),
    # ---- models and tasks ---------------------------------------------------------------------
    Probe(
        "a model name that is not on disk (offline)",
        fit(model="nonexistent-name"),
        "nonexistent-name",
        env={"HF_HUB_OFFLINE": "1"},
    ),
    Probe(
        "a task file that is not UTF-8",
        fit(task="{tmp}/t.json"),
        "not UTF-8",
        _write("t.json", '[{"input": "caf\xe9", "output": "x"}]'.encode("latin-1")),
    ),
    Probe(
        "a task file that is not JSON", fit(task="{tmp}/t.json"), "not valid JSON", _write("t.json", "[{'input': 'a'}]")
    ),
    Probe("an empty task file", fit(task="{tmp}/t.json"), "empty", _write("t.json", "[]")),
    Probe(
        "no test pair left once a repeated input is dropped",
        fit(task="{tmp}/t.json", n_train="3"),
        "test set",
        _write("t.json", json.dumps([{"input": w, "output": w} for w in ("hot", "cold", "hot", "up")])),
    ),
    Probe(
        "a pair beyond the token limit",
        fit(task="{tmp}/t.json"),
        "--max-tokens",
        _write(
            "t.json",
            json.dumps(
                [{"input": "hot " * 300, "output": "cold"}] + [{"input": f"w{i}", "output": "x"} for i in range(12)]
            ),
        ),
    ),
    # ---- output locations ----------------------------------------------------------------------
    Probe("a fit's --out that is a folder", fit(out="{tmp}/d"), "is a directory", _write("d/f", "")),
    Probe("a fit's --out ending in a separator", fit(out="{tmp}/new/"), "ends with a path separator"),
    Probe("a fit whose .json name is a folder", fit(), "x.json", _write("x.json/f", "")),
    Probe("an --out under a file", fit(out="{tmp}/file/x"), "is a file", _write("file", "")),
    Probe("a sweep's --out that is a folder", sweep(out="{tmp}/d"), "is a directory", _write("d/f", "")),
    Probe("a compare --out that exists (never replaced)", compare(), "already exists", _write("c.csv", "task\n")),
    # ---- results files -------------------------------------------------------------------------
    Probe("a results CSV without its settings", sweep(), "settings", _write("s.csv", "task,layer,seed\n")),
    Probe(
        "other data under the same task name",
        sweep(task="antonym", data_dir="{tmp}/b"),
        "differs",
        _sweep_then(_antonym_twice, ["--task", "antonym", "--data-dir", "{tmp}/a"]),
    ),
    Probe("other fit settings on the same results file", sweep(gamma="0.5"), "differ", _sweep_then(lambda tmp: None)),
    # ---- saved interventions -------------------------------------------------------------------
    Probe("Δ moved to another layer by hand", EVAL, "layer", _edit_json(lambda m: m.update(layer=2))),
    Probe('"layer": "1" (a string)', EVAL, "layer", _edit_json(lambda m: m.update(layer="1"))),
    Probe('"layer": 1.0 (a float)', EVAL, "layer", _edit_json(lambda m: m.update(layer=1.0))),
    Probe("a missing JSON key", EVAL, "task", _edit_json(lambda m: m.pop("task"))),
    Probe("an extra key in the template", EVAL, "template", _edit_json(lambda m: m["template"].update(x=1))),
    Probe("an extra key in the model", EVAL, "model", _edit_json(lambda m: m["model"].update(x=1))),
    Probe("a truncated tensor file", EVAL, "edited.safetensors", _edit_tensors(lambda b: b[: len(b) // 2])),
    Probe(
        "a tensor file from another save", EVAL, "does not match", _edit_tensors(lambda b: b[:-4] + b"\x00\x00\x80\x3f")
    ),
    Probe(
        "an intervention JSON that is not JSON",
        EVAL,
        "edited.json",
        lambda tmp: (_edit_json(lambda m: None)(tmp), (tmp / "edited.json").write_text("{not json")),
    ),
    # ---- the judge -----------------------------------------------------------------------------
    Probe(
        "a predictions file missing a column",
        ["judge", "{tmp}/p.csv", "--out", "{tmp}/v.csv"],
        "'target'",
        _write("p.csv", "task,method,seed,input,prediction\nantonym,x,0,hot,cold\n"),
        env={"HEADSTEER_JUDGE_BASE_URL": "http://127.0.0.1:9/v1", "HEADSTEER_JUDGE_MODEL": "m"},
    ),
]


def prepare(root: Path) -> Path:
    """A tiny model saved in ``root/model`` (once); returns its folder."""
    model = root / "model"
    if not model.is_dir():
        save_tiny_model("gemma3", model)
    return model


def run_probe(probe: Probe, root: Path, index: int) -> tuple[int, str, str]:
    """(exit status, stderr's error line, the command as shown) for one probe in its own scratch folder."""
    model = prepare(root)
    tmp = root / f"probe{index}"
    tmp.mkdir()
    if "{tmp}/edited" in probe.argv:  # the probe edits a copy of a real fit
        fit_argv = [a.replace("{model}", str(model)) for a in FIT_CMD]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main([*fit_argv, "--out", str(tmp / "iv")]) == 0
    probe.setup(tmp)
    argv = [a.replace("{tmp}", str(tmp)).replace("{model}", str(model)) for a in probe.argv]
    err = io.StringIO()
    saved = {k: os.environ.get(k) for k in probe.env}
    os.environ.update(probe.env)
    offline = huggingface_hub.constants.HF_HUB_OFFLINE  # read once at import: set it as the variable says
    huggingface_hub.constants.HF_HUB_OFFLINE = offline or probe.env.get("HF_HUB_OFFLINE") == "1"
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            status = main(argv)
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = offline
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    lines = [line for line in err.getvalue().splitlines() if "error:" in line]
    shown = " ".join(a if " " not in a else repr(a) for a in probe.argv)
    return status, " | ".join(lines).replace(str(tmp), "<tmp>").replace(str(model), "<tiny-model>"), shown


def render(results: list[tuple[Probe, str, str]]) -> str:
    rows = "\n".join(
        f"| {p.what} | `headsteer {cmd}` | `{line}` |".replace("{tmp}", "<tmp>").replace("{model}", "<tiny-model>")
        for p, cmd, line in results
    )
    return HEADER + rows + "\n" + FAULTS


HEADER = """# Bad input: what headsteer says

Every row was run on a tiny random model (`tests/cli/bad_inputs.py`; `tests/cli/test_bad_inputs.py` runs them
all and checks this page is current). Each exits with status 2, prints one line naming the flag, file or
pair at fault, and writes nothing; all but the results-file rows are refused before the model's weights
load. Regenerate with `python -m tests.cli.bad_inputs docs/bad-inputs.md`.

| tried | command | what the user sees (stderr) |
|---|---|---|
"""

FAULTS = """
## Faults tried (each a test)

| fault | what happens | test |
|---|---|---|
| two `headsteer sweep` processes on one `--out` (`--layers 0` and `--layers 1`) | both layers' rows are kept: every writer merges its rows under the file's lock | `tests/paper/test_sweep.py` |
| several writer processes racing on one results file | nothing lost or duplicated; each row keeps its own predictions | `tests/paper/test_results.py` |
| `kill -9` of a writer in the middle of a write | the file is the old one or the new one, never a part; the next writer removes the temporary file | `tests/paper/test_results.py` |
| a last CSV row cut off | not counted as done; recomputed, and the file ends as if never cut | `tests/paper/test_sweep.py` |
| `fit --n-train 20`, then `eval` | the recorded split is redone and no training input is scored | `tests/test_runs.py` |
| a save that fails half-way | every file of the artifact is as before | `tests/test_intervention.py` |
| `iv.delta` set to NaN in place, then `save()` | refused before anything is written | `tests/test_intervention.py` |
| the judge endpoint redirects to another host | not followed: the key never leaves the configured origin; exit 2 | `tests/paper/test_judge.py` |
| the judge endpoint answers an error object, no choices, a non-string or HTML | one line naming the problem, never the body; the votes received are kept | `tests/paper/test_judge.py` |
| `with iv.applied(model): model.generate(..., use_past_kv_cache=False)` | Δ at the prompt's last token in every pass: the same tokens as with the cache | `tests/test_generation.py` |
| a genuine bug (e.g. torch's own `RuntimeError`) | keeps its traceback: only headsteer's own errors become one line | `tests/cli/test_cli.py` |
"""


def run_all(root: Path) -> list[tuple[Probe, int, str, str]]:
    return [(p, *run_probe(p, root, i)) for i, p in enumerate(PROBES)]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        results = run_all(Path(scratch))
    Path(sys.argv[1]).write_text(render([(p, cmd, line) for p, _, line, cmd in results]))
