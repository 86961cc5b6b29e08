# Two entry points on a fresh machine: `make quickstart` and `make test`.
# Each creates .venv and installs what it needs. TORCH picks the torch build: the default is the
# CPU wheel these 2-core machines carry; on a GPU machine use e.g. `make TORCH=torch quickstart`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install quickstart test lint format docs bench bench-trl clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,docs]"
	touch $@

install: $(BIN)/.installed

# each quickstart writes a new folder, runs/quickstart-<date-time>/{linear,ctwa,plots}: a rerun never touches an earlier one
QUICKSTART := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

quickstart: install
	$(BIN)/morl fit cookbook/recipes/quickstart_linear.yaml --output-dir $(QUICKSTART)/linear
	$(BIN)/morl fit cookbook/recipes/quickstart.yaml --output-dir $(QUICKSTART)/ctwa
	$(BIN)/morl plot $(QUICKSTART)/linear $(QUICKSTART)/ctwa --out $(QUICKSTART)/plots

# the suite keeps its runs of the notebooks (outputs included) in build/executed, and the site shows them
test: install lint
	MORL_EXECUTED_NOTEBOOKS=build/executed $(BIN)/python -m pytest
	MORL_EXECUTED_NOTEBOOKS=build/executed NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the documentation site (site/); strict, so a broken link, reference or docstring fails the build
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# figures for benchmarks/RESULTS.md: what morl's machinery costs per step, and where a step's time goes
bench: install
	$(BIN)/python benchmarks/step_time.py
	$(BIN)/python benchmarks/profile_step.py

# morl against TRL's GRPOTrainer on the same job; TRL goes into its own environment, not morl's
bench-trl:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q "$(TORCH)" -e ".[bench]"
	.venv-bench/bin/python benchmarks/vs_trl.py

clean:
	rm -rf $(VENV) runs site .pytest_cache
