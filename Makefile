# Makefile: the few commands a newcomer needs. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
JOB    ?= configs/demo.yaml
EXTRAS := metrics,plot,redis,s3,delta,iceberg
RUNTIME := $(VENV)/.runtime
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install harvest test bench bench-long lint format format-check typecheck imports check docs clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

# What running needs (the package and its runtime extras); `make install` adds the dev tools.
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	@touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev,docs,orchestrators,$(EXTRAS)]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv with every extra and the dev tools (editable)

harvest: $(RUNTIME) ## harvest JOB (default: the demo job, from the bundled simulator into output/demo)
	$(BIN)/harvester run $(JOB)

test: $(STAMP) ## run the whole test suite
	$(BIN)/pytest -q --durations=15

bench: $(STAMP) ## run the benchmark suite and print its table (about 6 minutes)
	$(BIN)/python -m tests.benchmarks

bench-long: $(STAMP) ## budget use at the real default limits, three minutes
	$(BIN)/python -m tests.benchmarks --long

lint: $(STAMP) ## ruff over the package and tests
	$(BIN)/ruff check harvester tests

format: $(STAMP) ## ruff format over the package and tests
	$(BIN)/ruff format harvester tests

format-check: $(STAMP) ## fail when a file is not formatted as ruff format would
	$(BIN)/ruff format --check harvester tests

typecheck: $(STAMP) ## mypy --strict over the package
	$(BIN)/mypy

imports: $(STAMP) ## import-linter: each stage imports only from the stages below it
	$(BIN)/lint-imports

check: lint format-check typecheck imports ## lint, format and type checks, import layers (CI runs them first)

docs: $(STAMP) ## build the docs site into docs/site with --strict (the reference is generated)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -f docs/mkdocs.yml

clean: ## remove the venv, caches and what runs wrote under output/
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis docs/site
	find output -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
