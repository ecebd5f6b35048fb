# Tributary: every workflow is a target here; CI and the README call the same ones.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Run parameters for `make demo` (see configs/ and docs/).
CONFIG ?= configs/demo.yaml
CLIENTS ?=
ROUNDS ?=
MODEL ?=
DATASET ?=
PARTITION ?=
ALPHA ?=
EPOCHS ?= 3

.PHONY: help venv test test-fast lint format demo bench clean

help:
	@echo "make demo   - set up .venv if missing and run the main job"
	@echo "make test   - set up .venv if missing and run every test"
	@echo "make lint   - ruff (lint + format check) and mypy"
	@echo "make bench  - run the benchmarks in bench/"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared aggregator_service client_worker

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP)
	$(BIN)/python -m client_worker.centralized --dataset mnist5k --model mlp --epochs $(EPOCHS)

bench: $(STAMP)
	$(BIN)/python bench/bench_wire.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
