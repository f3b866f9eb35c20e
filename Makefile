# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-slow test-faults bench clean lint format

setup:
	@bash scripts/setup.sh

## Set up, then run the main job on the built-in synthetic corpus.
demo: setup
	@bash scripts/demo.sh

## Set up, then run the fast test suite.
test: setup
	$(PY) -m pytest -q

## The slow tests: real corpora from ../shared/datasets and longer end-to-end runs.
test-slow: setup
	$(PY) -m pytest -q -m slow

## Fault injection: extract and train killed with SIGKILL at random moments, resumed, checked.
test-faults: setup
	$(PY) -m pytest -q -m faults -p no:cacheprovider

## Style, types and import contracts: ruff check, ruff format --check, mypy on src/, lint-imports.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo

## Apply ruff's safe fixes and the formatter.
format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## Remove what the demo and the README's commands write: every run, the synthetic corpus and the
## feature stores (all under runs/), ONNX exports (exported/) and the pytest cache. .venv stays.
clean:
	rm -rf runs exported .pytest_cache
