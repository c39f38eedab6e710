# Two commands do everything on a fresh machine: `make run` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
OUT    ?= runs/default

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

# Idempotent: re-installs only when a pin file changes.
$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

run: setup
	$(PY) pipeline.py run --config $(CONFIG) --out $(OUT)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf runs .pytest_cache
