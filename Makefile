# Two entry points on a fresh machine: `make quickstart` and `make test`.
# Each creates .venv and installs what it needs. TORCH picks the torch build: the default is the
# CPU wheel these 2-core machines carry; on a GPU machine use e.g. `make TORCH=torch quickstart`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN = $(VENV)/bin
# every package the tests install, pinned (uv pip compile, universal: any Python >= 3.10); torch is pinned by TORCH
LOCK := requirements/test.lock
INSTALL := PYTHON=$(PYTHON) scripts/install.sh

.PHONY: install quickstart quickstart-linear quickstart-ctwa test check test-latest lock lint format docs bench bench-trl clean

# morl alone (what the quickstart runs), then its test and docs tools, both at the lock's versions
$(VENV)/.installed-run: pyproject.toml $(LOCK)
	$(INSTALL) $(VENV) "$(TORCH)" "" $(LOCK)
	touch $@

$(VENV)/.installed-test: pyproject.toml $(LOCK)
	$(INSTALL) $(VENV) "$(TORCH)" test,docs $(LOCK)
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run

# each quickstart writes a new folder, runs/quickstart-<date-time>/{linear,ctwa,plots}: a rerun never touches an earlier one
QUICKSTART := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

# the two runs are independent single-thread processes: side by side on 2 cores, each run's output printed whole when
# it ends (same numbers as one after the other: each run seeds its own generators)
quickstart: $(VENV)/.installed-run
	@echo "training TinyMath with equal weights and with CTWA, side by side (about a minute) ..."
	@$(MAKE) --no-print-directory -j2 --output-sync=target QUICKSTART=$(QUICKSTART) quickstart-linear quickstart-ctwa
	$(BIN)/morl plot $(QUICKSTART)/linear $(QUICKSTART)/ctwa --out $(QUICKSTART)/plots

quickstart-linear:
	$(BIN)/morl fit cookbook/recipes/quickstart_linear.yaml --output-dir $(QUICKSTART)/linear

quickstart-ctwa:
	$(BIN)/morl fit cookbook/recipes/quickstart.yaml --output-dir $(QUICKSTART)/ctwa

# the suite keeps its runs of the notebooks (outputs included) in build/executed, and the site shows them
test: $(VENV)/.installed-test
	$(MAKE) --no-print-directory check VENV=$(VENV)

# lint, the suite and the strict docs build in VENV, whatever installed it
check:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MORL_EXECUTED_NOTEBOOKS=build/executed $(BIN)/python -m pytest -n auto
	mkdir -p build/executed && touch build/executed/.done
	MORL_EXECUTED_NOTEBOOKS=build/executed NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# drift seen on purpose: the newest releases pyproject.toml allows, in their own environment, then the whole check
test-latest:
	$(INSTALL) .venv-latest "$(TORCH)" test,docs
	$(MAKE) --no-print-directory check VENV=.venv-latest

# move the lock deliberately: resolve the newest allowed releases again, then the whole check on them
lock: $(VENV)/.installed-test
	$$(command -v uv || echo $(BIN)/uv) pip compile pyproject.toml --extra test --extra docs --universal \
		--python-version 3.10 --no-emit-package torch --upgrade -q -o $(LOCK)
	$(MAKE) --no-print-directory test VENV=$(VENV)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the documentation site (site/); strict, so a broken link, reference or docstring fails the build. The notebooks
# are run first (at small size, as the suite runs them) so the site shows their outputs
docs: $(VENV)/.installed-test build/executed/.done
	MORL_EXECUTED_NOTEBOOKS=build/executed NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

build/executed/.done: $(wildcard cookbook/*.ipynb)
	MORL_EXECUTED_NOTEBOOKS=build/executed $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_notebooks.py
	touch $@

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# figures for benchmarks/RESULTS.md: what morl's machinery costs per step, and where a step's time goes
bench: $(VENV)/.installed-run
	$(BIN)/python benchmarks/step_time.py
	$(BIN)/python benchmarks/method_cost.py --steps 200 --variants ctwa,fixed-nodiag,fixed
	$(BIN)/python benchmarks/profile_step.py

# morl against TRL's GRPOTrainer on the same job; TRL goes into its own environment, not morl's
bench-trl:
	$(INSTALL) .venv-bench "$(TORCH)" bench $(LOCK)
	.venv-bench/bin/python benchmarks/vs_trl.py

clean:
	rm -rf $(VENV) .venv-latest .venv-bench site build .pytest_cache  # environments and build output; never runs/
