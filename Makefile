# Every target installs what it needs into .venv first, so each is one command on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint typecheck demo bench openapi clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## test: the whole suite (unit, integration, acceptance) against a real Postgres
test: $(STAMP)
	$(BIN)/python -m pytest -q

## test-fast: unit tests only (no database)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench
	$(BIN)/ruff format --check relay tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

## demo: the whole flow end to end on an embedded Postgres (or RELAY_DATABASE_URL)
demo: $(STAMP)
	$(BIN)/relay demo

## bench: throughput/latency benchmark (not run by CI)
bench: $(STAMP)
	$(BIN)/python -m bench

## openapi: regenerate docs/openapi.json from the API's models (a test checks it is current)
openapi: $(STAMP)
	$(BIN)/python -m relay.api.openapi docs/openapi.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
