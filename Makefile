# Every target creates the virtualenv on first use, so a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-fleet docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

## Run the gateway on the embedded default: a built-in mock backend, in-memory limits.
demo: $(STAMP)
	$(BIN)/llmproxy serve --demo

## Lint, type-check and run the whole test suite.
test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check llmproxy tests bench
	$(BIN)/ruff format --check llmproxy tests bench

typecheck: $(STAMP)
	$(BIN)/mypy llmproxy
	$(BIN)/mypy tests bench

unit: $(STAMP)
	$(BIN)/pytest -q

## Overhead benchmark against a direct connection (installs wrk and nginx from Debian when root).
bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.auth
	$(BIN)/python -m bench.limits

## Regenerate shell completions (completions/) and man pages (man/) from the CLI.
docs: $(STAMP)
	$(BIN)/python -m llmproxy.cli.docgen

## Fleet-aware routing: 4 simulated GPU replicas, a multi-tenant workload, every strategy.
bench-fleet: $(STAMP)
	$(BIN)/python -m bench.fleet

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
