# Two entry points on a fresh machine: `make quickstart` and `make test`.
# Each creates .venv and installs what it needs. TORCH picks the torch build: the default is the
# CPU wheel these 2-core machines carry; on a GPU machine use e.g. `make TORCH=torch quickstart`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install quickstart test lint format bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

quickstart: install
	$(BIN)/morl fit cookbook/recipes/quickstart_linear.yaml
	$(BIN)/morl fit cookbook/recipes/quickstart.yaml
	$(BIN)/morl plot runs/quickstart_linear runs/quickstart --out runs/quickstart_plots

test: install lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf $(VENV) runs .pytest_cache
