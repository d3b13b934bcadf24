# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Fresh clone: ../shared/traces sits beside the repository (CI lays it there too).
export JSORC_TRACES ?= $(abspath ../shared/traces)

.PHONY: setup jaseci-env demo demo-live test lint typecheck bench clean

setup: $(STAMP)

# Re-install only when the package metadata changed: `make setup` is quick when nothing did.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Real Jaseci 1.4 for the interop tests (tests/jsorc_live/test_jaseci_interop.py), in its own
# environment: it needs pydantic 1 and an old FastAPI. Its own pins are loose, so pin the four.
# About 80 s the first time; re-checked only when this Makefile changes.
JASECI_VENV := .jaseci-venv
JASECI_STAMP := $(JASECI_VENV)/.installed
JASECI_PINS := jaseci==1.4.2.6 fastapi==0.99.1 starlette==0.27.0 pydantic==1.10.27

jaseci-env: $(JASECI_STAMP)

$(JASECI_STAMP): Makefile
	test -x $(JASECI_VENV)/bin/python || $(PYTHON) -m venv $(JASECI_VENV)
	$(JASECI_VENV)/bin/pip install --quiet --disable-pip-version-check $(JASECI_PINS)
	touch $(JASECI_STAMP)

demo: setup
	$(BIN)/python experiments/demo.py --out runs/demo

# The live system on this machine: a real jsorc server, replica processes, two policies.
demo-live: setup
	$(BIN)/python experiments/demo_live.py

lint: setup
	$(BIN)/ruff check policies jsorc_sim jsorc_live tests experiments benchmarks notebooks
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

test: lint typecheck jaseci-env
	$(BIN)/python -m pytest -n 2 -q

bench: setup
	$(BIN)/python benchmarks/bench_sim.py
	$(BIN)/python benchmarks/bench_experiment.py

clean:
	rm -rf $(VENV) $(JASECI_VENV) runs .pytest_cache .mypy_cache .ruff_cache
