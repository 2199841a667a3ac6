# The README's two commands: `make quickstart` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/pacos quickstart

lint: $(STAMP)
	$(BIN)/ruff check pacos tests benchmarks
	$(BIN)/ruff format --check pacos tests benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest -q
