# Two set-up commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install everything first (once).
PYTHON ?= python3
# A CPU build of torch; the package itself accepts any torch>=2.4.
TORCH ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install demo test

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH)"
	$(VENV)/bin/pip install --quiet -e ".[test]"
	@# kaleido (PNG export) drives a Chromium and cannot download one here: install Debian's if missing.
	@command -v chromium >/dev/null || command -v google-chrome >/dev/null \
	  || (command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: no Chromium; PNG export of figures needs one (see README); HTML still works"
	touch $(STAMP)

demo: install
	$(VENV)/bin/headsteer demo

test: install
	$(VENV)/bin/python -m pytest
