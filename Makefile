# crossdistill: every target installs what it needs first (idempotent venv in .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
export WANDB_MODE ?= offline
# the main job on built-in data; override: make train ARGS="experiment=mfh/exp2 seed=1"
MAIN_JOB ?= experiment=face_voice/demo
export WANDB_SILENT ?= true

.PHONY: help install train test test-full lint format reproduce-mfh reproduce-c2kd reproduce-text-image reproduce-dskd reproduce-avmnist reproduce-avmnist-alg1 benchmark-mfh benchmark-overhead clean

help:
	@echo "make train          run the main job on built-in data (ARGS='key=value ...' to override)"
	@echo "make test           fast tests (excludes slow)"
	@echo "make test-full      all tests, including slow ones"
	@echo "make reproduce-mfh  MFH Fig. 2 / Fig. 3 / Table 2 -> outputs/mfh_reproduction/latest"
	@echo "make reproduce-c2kd face->voice C2KD table (conf/table/c2kd.yaml: 9 rows x 3 gammas x 3 seeds, ~90 min on 2 CPU cores) -> outputs/tables/c2kd/latest (ARGS=--quick: minutes)"
	@echo "make reproduce-dskd  optical->radar baselines + DSKD table (conf/table/dskd.yaml: 15 rows x 2 gaps x 5 seeds) -> outputs/tables/dskd/latest (ARGS=--quick: minutes)"
	@echo "make reproduce-avmnist  real spoken + handwritten digits, every method x 3 directions (conf/table/avmnist.yaml: 18 rows x 3 x 5 seeds; needs ../shared/data or data.fsdd_root/mnist_root) -> outputs/tables/avmnist/latest (ARGS=--quick: minutes)"
	@echo "make reproduce-avmnist-alg1  MFH Algorithm 1 on the AV-MNIST fusion teacher: teacher reduced to its top / bottom 32 fused channels (conf/table/avmnist_alg1.yaml, 5 seeds) -> outputs/tables/avmnist_alg1/latest (ARGS=--quick)"
	@echo "make reproduce-text-image  text->image table (conf/table/text_image.yaml: 8 rows x 3 seeds x 100/25/10 %) -> outputs/tables/text_image/latest (ARGS=--quick: minutes)"
	@echo "make benchmark-mfh  batched vs one-by-one training speed"
	@echo "make benchmark-overhead  framework vs plain PyTorch loop: time per epoch, set-up, memory (ARGS=--quick)"
	@echo "make lint           ruff"

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: install
	$(VENV)/bin/crossdistill-train $(or $(ARGS),$(MAIN_JOB))

test: install
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-full: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests scripts

format: install
	$(VENV)/bin/ruff format src tests scripts

reproduce-mfh: install
	$(PY) scripts/reproduce_mfh.py $(ARGS)

reproduce-c2kd: install
	$(VENV)/bin/crossdistill-table run c2kd $(ARGS)

reproduce-text-image: install
	$(VENV)/bin/crossdistill-table run text_image $(ARGS)

reproduce-dskd: install
	$(VENV)/bin/crossdistill-table run dskd $(ARGS)

reproduce-avmnist: install
	$(VENV)/bin/crossdistill-table run avmnist $(ARGS)

reproduce-avmnist-alg1: install
	$(PY) scripts/avmnist_algorithm1.py $(ARGS)

benchmark-mfh: install
	$(PY) scripts/benchmark_mfh.py $(ARGS)

benchmark-overhead: install
	$(PY) scripts/benchmark_overhead.py $(ARGS)

clean:
	rm -rf outputs/*/ .pytest_cache .ruff_cache
