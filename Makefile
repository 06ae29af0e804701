# Two set-up commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install everything first (once); nothing is installed outside .venv.
# Opt-in: `make chromium` (PNG figures; apt-get, as root) and `make notebooks` (JupyterLab).
# `make test-kinds`: a second environment, .venv-tl3, with TransformerLens 3.x and sae-lens installed beside
# headsteer, running the tests that touch model kinds (tiny HookedTransformers and TransformerBridges).
PYTHON ?= python3
# A CPU build of torch; the package itself accepts any torch>=2.4.
TORCH ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed
NOTEBOOKS_STAMP := $(VENV)/.notebooks
TL3_VENV := .venv-tl3
TL3_STAMP := $(TL3_VENV)/.installed
# Every test that runs a model of each kind, or checks what differs between them (no real model, no download);
# test_docs runs the README's HookedTransformer example, which the TL 4.x environment skips.
KIND_TESTS := tests/test_backends.py tests/fitting/test_forward.py tests/fitting/test_loop.py \
	tests/fitting/test_loop_batched.py tests/fitting/test_unembed.py tests/fitting/test_from_layer.py \
	tests/fitting/test_linear_kernel.py tests/fitting/test_bare_bridge.py tests/fitting/test_fused_block.py \
	tests/test_generation.py tests/test_hooks.py \
	tests/test_evaluate.py tests/baselines tests/test_models.py tests/test_intervention.py tests/heads \
	tests/paper/test_opinion.py tests/paper/test_sweep.py tests/test_reference.py tests/test_docs.py
# Jupyter refuses to run as root unless told to.
JUPYTER_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: install demo lint test test-kinds chromium notebooks

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH)"
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/headsteer demo

# ruff and mypy come with the `test` extra; their settings are in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest

# sae-lens (6.x) caps transformer-lens below 4.0, so pip must find one 3.x that suits both it and headsteer;
# `pip check` then shows the environment is consistent.
$(TL3_STAMP): pyproject.toml
	$(PYTHON) -m venv $(TL3_VENV)
	$(TL3_VENV)/bin/pip install --quiet --upgrade pip
	$(TL3_VENV)/bin/pip install --quiet "$(TORCH)"
	$(TL3_VENV)/bin/pip install --quiet -e ".[test]" sae-lens
	$(TL3_VENV)/bin/pip check
	touch $(TL3_STAMP)

test-kinds: $(TL3_STAMP)
	$(TL3_VENV)/bin/python -c "from importlib.metadata import version as v; \
	print('transformer-lens', v('transformer-lens'), '| sae-lens', v('sae-lens'), '| transformers', v('transformers'))"
	$(TL3_VENV)/bin/python -m pytest -m "not real_model" $(KIND_TESTS)

# PNG export of figures (kaleido) drives a Chromium, which pip cannot install: Debian's, with apt-get (as root).
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null; then \
	  echo "a Chromium is installed: PNG export of figures works"; \
	else \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null && echo "installed Debian's chromium"; \
	fi

$(NOTEBOOKS_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet -e ".[test,notebooks]"
	touch $(NOTEBOOKS_STAMP)

notebooks: $(NOTEBOOKS_STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $(JUPYTER_ARGS)
