# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Fresh clone: ../shared/traces sits beside the repository (CI lays it there too).
export JSORC_TRACES ?= $(abspath ../shared/traces)

.PHONY: setup demo test lint typecheck bench clean

setup: $(STAMP)

# Re-install only when the package metadata changed: `make setup` is quick when nothing did.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/python experiments/demo.py --out runs/demo

lint: setup
	$(BIN)/ruff check policies jsorc_sim jsorc_live tests experiments benchmarks notebooks
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -n 2 -q

bench: setup
	$(BIN)/python benchmarks/bench_sim.py
	$(BIN)/python benchmarks/bench_experiment.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
