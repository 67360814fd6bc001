# skald: make help lists the targets.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help install run test lint typecheck fmt check bench

help:  ## list targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## create .venv and install skald with its dev tools
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'

run:  ## install the server (no dev tools) and start it on ./data (127.0.0.1:8080)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	$(BIN)/skald serve

test: install  ## run the whole test suite, then tests/compat again on stock hypercorn (patches off)
	$(BIN)/python -m pytest -q
	# skald must serve the legacy relay without its hypercorn patches too (docs/hypercorn.md); a test of
	# what only a patch gives is marked hypercorn_patch and skipped in this run.
	SKALD_HYPERCORN_PATCHES=false $(BIN)/python -m pytest -q tests/compat

lint:  ## ruff
	$(BIN)/ruff check skald tests bench

typecheck:  ## mypy --strict over skald, tests and bench (pyproject: [tool.mypy] files)
	$(BIN)/mypy

fmt:  ## format and fix
	$(BIN)/ruff format skald tests bench
	$(BIN)/ruff check --fix skald tests bench

check: lint typecheck test  ## everything CI checks

bench: install  ## print the benchmark figures (the memory soak for 3 minutes; its figure is for 20)
	for b in bench/*.py; do case $$b in bench/soak.py) args="--minutes 3 --window 30 --compare";; *) args="";; esac; \
		$(BIN)/python $$b $$args || exit 1; done
