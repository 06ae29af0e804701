# Two set-up commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install everything first (once); nothing is installed outside .venv.
# Opt-in: `make chromium` (PNG figures; apt-get, as root) and `make notebooks` (JupyterLab).
PYTHON ?= python3
# A CPU build of torch; the package itself accepts any torch>=2.4.
TORCH ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed
NOTEBOOKS_STAMP := $(VENV)/.notebooks
# Jupyter refuses to run as root unless told to.
JUPYTER_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: install demo lint test chromium notebooks

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
