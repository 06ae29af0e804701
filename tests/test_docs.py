"""The user docs cannot rot: every Python snippet runs, every command line parses, every link resolves.

The ```python blocks of each Markdown file (README.md first) run in order, in one namespace per file,
in a temporary working directory (so ``runs/...`` and other relative paths land there), with
``headsteer.load_model``, Hugging Face's ``from_pretrained`` and (TransformerLens 3.x)
``HookedTransformer.from_pretrained`` returning tiny random Gemma 3 models: no download and no real model.
A snippet that imports HookedTransformer is skipped where TransformerLens has none (4.x). The tiny
model has 6 layers rather than ``tiny_bridge``'s 3, so the snippets can use layer 4, the default and
the layer the docs recommend. Each ``headsteer ...`` line of a ```bash block is parsed by
``headsteer.cli.build_parser()`` (nothing runs).
"""

from __future__ import annotations

import argparse
import inspect
import re
import shlex
from pathlib import Path

import pytest
import torch
import transformers

import headsteer
import headsteer.models
from headsteer.cli import build_parser
from tests.helpers import REPO, TINY_CONFIGS, has_hooked_transformer, tiny_tokenizer

ROOT = REPO
README = ROOT / "README.md"
DOCS = [README, ROOT / "RESEARCH.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
DOCS_LAYERS = 6


def blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """The fenced blocks of ``language`` in ``path``: (line number of the block's first line, text)."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


def command_lines(path: Path) -> list[str]:
    """Every ``headsteer ...`` command line in the file's bash blocks (continuation lines joined)."""
    lines = []
    for _, body in blocks(path, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip().startswith("headsteer "):
                lines.append(line.strip())
    return lines


def tiny_docs_hf_model():
    """A tiny random Gemma 3 like ``tests.helpers.tiny_hf_model("gemma3")``, with 6 layers."""
    from transformers import AutoModelForCausalLM

    fields = TINY_CONFIGS["gemma3"]().to_dict()
    fields.pop("layer_types", None)  # derived from num_hidden_layers
    config = transformers.Gemma3TextConfig(**{**fields, "num_hidden_layers": DOCS_LAYERS})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # as tests.helpers: weights large enough for Δ to move the logits
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def docs_model():
    return headsteer.wrap_model(tiny_docs_hf_model(), tiny_tokenizer(), "tiny-gemma3-docs")


@pytest.fixture
def offline_models(docs_model, monkeypatch):
    """``load_model`` and ``from_pretrained`` give tiny models; their arguments are checked against the real ones."""
    real_load_model = inspect.signature(headsteer.models.load_model)
    tokenizer = tiny_tokenizer()

    def load_model(*args, **kwargs):
        real_load_model.bind(*args, **kwargs)  # a snippet passing an argument load_model lacks fails here
        return docs_model

    monkeypatch.setattr(headsteer, "load_model", load_model)
    monkeypatch.setattr(headsteer.models, "load_model", load_model)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_docs_hf_model())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    if has_hooked_transformer():
        from transformer_lens import HookedTransformer

        from tests.tiny_hooked import hooked_from_hf

        hooked = hooked_from_hf(tiny_docs_hf_model(), tokenizer, "tiny-gemma3-docs")
        monkeypatch.setattr(HookedTransformer, "from_pretrained", lambda *a, **k: hooked)


PYTHON_DOCS = [p for p in DOCS if blocks(p, "python")]


def test_the_readme_has_python_snippets():
    assert README in PYTHON_DOCS


@pytest.mark.parametrize("path", PYTHON_DOCS, ids=lambda p: p.name)
def test_python_snippets_run_in_order(path, offline_models, tmp_path, monkeypatch):
    """All of a file's snippets, top to bottom, in one namespace: each may use what an earlier one made."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEADSTEER_CACHE_DIR", str(tmp_path / "cache"))
    namespace: dict[str, object] = {"__name__": f"docs:{path.name}"}
    for first_line, code in blocks(path, "python"):
        if "import HookedTransformer" in code and not has_hooked_transformer():
            continue  # TransformerLens 4.x removed it; the TransformerLens 3.x environment runs this snippet
        # Padded so that a traceback names the line in the Markdown file.
        exec(compile("\n" * (first_line - 1) + code, str(path), "exec"), namespace)


CLI_LINES = [(path, line) for path in DOCS for line in command_lines(path)]


def test_the_readme_has_command_lines():
    assert any(path == README for path, _ in CLI_LINES)


@pytest.mark.parametrize(
    "path,line", CLI_LINES, ids=[f"{p.name}:{i}:{line.split()[1]}" for i, (p, line) in enumerate(CLI_LINES)]
)
def test_command_line_parses(path, line):
    """The flags and values of every documented command are accepted by today's parser."""
    build_parser().parse_args(shlex.split(line, comments=True)[1:])


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_readme_lists_every_subcommand():
    """The README's table of subcommands holds exactly the parser's subcommands."""
    listed = set(re.findall(r"^\| `headsteer (\w+)` \|", README.read_text(encoding="utf-8"), re.MULTILINE))
    assert listed == set(subcommands())


def test_the_flags_behave_as_the_docs_say():
    """README and docs/cli.md: `--seeds N` runs seeds 0..N-1 and `--max-test` is 100 unless given, in every
    command that has them; `eval` takes its split from the intervention (no `--n-train`)."""
    commands = subcommands()
    for name, sub in commands.items():
        dests = {a.dest for a in sub._actions}
        if "seeds" in dests:
            assert isinstance(sub.get_default("seeds"), int), f"headsteer {name} --seeds is not a count"
        if "max_test" in dests:
            assert sub.get_default("max_test") == 100, (
                f"headsteer {name} --max-test defaults to {sub.get_default('max_test')}"
            )
    assert "n_train" not in {a.dest for a in commands["eval"]._actions}


def test_every_make_target_the_docs_name_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE))
    named = {t for path in DOCS for t in re.findall(r"(?:^|`)make ([a-z][\w-]*)", path.read_text(encoding="utf-8"))}
    assert named, "the docs name no make target"
    assert named <= targets


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path):
    """Every relative link ([text](path) or [text](path#anchor)) names a file or folder that exists."""
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name}: link to {target} is broken"


def test_the_readme_is_for_users():
    """Under 200 lines, and no test counts (numbers that go stale with every test added)."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    assert not re.search(r"\d+ (passed|failed|skipped)", text)
