# Tributary: every workflow is a target here; CI and the README call the same ones.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Transparent huge pages for glibc's malloc: a fresh 45 MB model payload is then faulted in
# 2 MiB at a time instead of 4 KiB (encode 3x faster, docs/benchmarks.md). Ignored by older glibc.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

# Run parameters for `make demo` (empty = the config's value; see configs/ and docs/).
CONFIG ?= configs/demo.yaml
CLIENTS ?=
ROUNDS ?=
MODEL ?=
DATASET ?=
PARTITION ?=
ALPHA ?=
# Aggregation strategy by name (fedavg, fedavgm, fedmedian, fedadam, ...: README's Strategies);
# parameters with --set in a config
STRATEGY ?=
# Worker processes (empty = one per client up to 32 clients, one per core beyond); fewer run
# the clients as virtual clients, one training per core overall: `make demo PROCESSES=2`
PROCESSES ?=
# `make demo` ends with the transfer-learning scenario (`make transfer`); TRANSFER=0 skips it.
# Only the default config's demo does: `make demo CONFIG=...` runs that config alone.
TRANSFER ?= $(if $(filter configs/demo.yaml,$(CONFIG)),1,0)
PRETRAINED := data/pretrained/mlp-digits-0-4.pt
# Single parts on machines of their own: `make run-aggregator`, `make run-worker ID=3 SERVER=...`
SERVER ?= http://127.0.0.1:8000
ID ?= 0
HOST ?= 127.0.0.1
PORT ?= 8000
STATE_DIR ?= state
# `make centralized`: the demo's model trained on the union of the clients' data
EPOCHS ?= 20
# `make compare`: strategy specs, space-separated (empty = the script's list), e.g.
# STRATEGIES="fedavg fedadam:eta=0.01,tau=0.001"; ROUNDS applies too
STRATEGIES ?=
# Debian's dataset-fashion-mnist installs here (shared/fashion_mnist.py reads it)
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
FASHION_MNIST_FILES := $(addprefix $(FASHION_MNIST_DIR)/,train-images-idx3-ubyte.gz \
	train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

RUN_FLAGS := --config $(CONFIG) \
	$(if $(CLIENTS),--clients $(CLIENTS)) $(if $(ROUNDS),--rounds $(ROUNDS)) \
	$(if $(MODEL),--model $(MODEL)) $(if $(DATASET),--dataset $(DATASET)) \
	$(if $(PARTITION),--partition $(PARTITION)) $(if $(ALPHA),--alpha $(ALPHA)) \
	$(if $(STRATEGY),--set strategy=$(STRATEGY)) \
	$(if $(PROCESSES),--worker-processes $(PROCESSES))

.PHONY: help venv data browser test test-fast test-containers docker-tools image-offline lint format demo transfer centralized run-aggregator run-worker \
	bench compare clean

help:
	@echo "make demo   - set up .venv if missing, run the main job, then the transfer scenario"
	@echo "make test   - set up .venv if missing and run every test"
	@echo "make test-containers - the compose federation in Docker (root; engine started if need be)"
	@echo "make image-offline - the image without registry or index (docs/deploy.md)"
	@echo "make transfer - pretrain a backbone on digits 0-4, fine-tune a new head federated"
	@echo "make data   - install Fashion-MNIST from Debian's dataset-fashion-mnist where possible"
	@echo "make browser - install Debian's chromium where possible (the dashboard's browser tests)"
	@echo "make lint   - ruff (lint + format check), mypy and the layer contract (import-linter)"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make compare - strategies on label-skewed mnist5k clients: table + docs/img/compare.png"
	@echo "make run-aggregator / make run-worker ID=3 SERVER=http://host:8000"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Full Fashion-MNIST offline, where this machine allows it; never fails the build: without
# it, `dataset: fashion-mnist` reads torchvision's files under data_dir instead.
data:
	@if ls $(FASHION_MNIST_FILES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's dataset-fashion-mnist (Fashion-MNIST, 30 MB)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
			&& apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
		|| echo "could not install dataset-fashion-mnist: fashion-mnist will read torchvision's files"; \
	else \
		echo "for fashion-mnist offline: sudo apt-get install dataset-fashion-mnist"; \
	fi; true

# Chromium for the dashboard's browser tests (Playwright drives it); never fails the build:
# without it those tests are skipped, saying why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium (the dashboard's browser tests)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
			&& apt-get install -y -q chromium >/dev/null 2>&1; } \
		|| echo "could not install chromium: the dashboard's browser tests will be skipped"; \
	else \
		echo "for the dashboard's browser tests: sudo apt-get install chromium"; \
	fi; true

test: $(STAMP) data browser
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not containers"

# The compose federation in containers (tests/deploy/test_containers.py): as root, installs
# Debian's docker.io, docker-compose and debootstrap when missing, like `make data`.
test-containers: $(STAMP) docker-tools
	$(BIN)/python -m pytest -m containers tests/deploy/test_containers.py

docker-tools:
	@if command -v dockerd >/dev/null && command -v docker-compose >/dev/null \
		&& command -v debootstrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's docker.io, docker-compose and debootstrap"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q docker.io docker-compose debootstrap >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
			&& apt-get install -y -q docker.io docker-compose debootstrap >/dev/null; }; \
	else \
		echo "for make test-containers: sudo apt-get install docker.io docker-compose debootstrap"; \
	fi

# The project image without a registry or a package index (docs/deploy.md, air-gapped).
# The build needs BuildKit: Debian's docker CLI has it built in, others need buildx.
DOCKER ?= $(if $(wildcard /usr/bin/docker),/usr/bin/docker,docker)
image-offline: docker-tools
	DOCKER=$(DOCKER) deploy/docker/build-offline.sh all

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared aggregator_service client_worker tests bench
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP) data $(if $(filter 1,$(TRANSFER)),$(PRETRAINED))
	$(BIN)/python -m shared.runs $(RUN_FLAGS)
ifeq ($(TRANSFER),1)
	@echo "== transfer learning: a pretrained backbone, a new head, federated fine-tuning"
	@echo "== (configs/transfer-mlp.yaml; alone: make transfer; skip: make demo TRANSFER=0)"
	$(BIN)/python -m shared.runs --config configs/transfer-mlp.yaml
endif

# `make transfer`: pretrain a backbone on digits 0-4, then fine-tune a new head federated

$(PRETRAINED): | $(STAMP)
	$(BIN)/python -m client_worker.centralized --dataset mnist5k --model mlp --classes 5 \
		--epochs 10 --batch-size 32 --lr 0.05 --save $(PRETRAINED)

transfer: $(STAMP) data $(PRETRAINED)
	$(BIN)/python -m shared.runs --config configs/transfer-mlp.yaml

centralized: $(STAMP)
	$(BIN)/python -m client_worker.centralized --dataset mnist5k --model mlp --epochs $(EPOCHS) \
		--batch-size 32 --lr 0.05

run-aggregator: $(STAMP)
	$(BIN)/python -m aggregator_service --config $(CONFIG) --host $(HOST) --port $(PORT) \
		--state-dir $(STATE_DIR)

run-worker: $(STAMP)
	$(BIN)/python -m client_worker --config $(CONFIG) --server $(SERVER) --client-id $(ID) \
		--partition-id $(ID)

bench: $(STAMP)
	$(BIN)/python bench/bench_wire.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_memory.py
	$(BIN)/python bench/bench_fold.py
	$(BIN)/python bench/bench_checkpoint.py
	$(BIN)/python bench/bench_upload.py

compare: $(STAMP)
	$(BIN)/python bench/bench_compare.py $(if $(ROUNDS),--rounds $(ROUNDS)) \
		$(foreach spec,$(STRATEGIES),--strategy $(spec))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
