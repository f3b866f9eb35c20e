# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
TEST_WORKERS ?= 2

.PHONY: setup demo test test-learning test-e2e test-slow test-faults test-all bench clean lint format

setup:
	@bash scripts/setup.sh

## Set up, then run the main job on the built-in synthetic corpus.
demo: setup
	@bash scripts/demo.sh

## Set up, then run the fast test suite (everything but the marked suites below; a few minutes) on
## TEST_WORKERS pytest-xdist processes (whole files per worker; TEST_WORKERS=0 runs in this process).
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

## The paper-claim learning tests: every registered model trained on the synthetic corpus
## (EMOMIX_LEARNING_SEED=1 or 2 for the other seeds the margins were set on).
test-learning: setup
	$(PY) -m pytest -q -m learning

## Long end-to-end runs: cross-validation trainings, the browser test, the service load test.
test-e2e: setup
	$(PY) -m pytest -q -m e2e

## The slow tests: real corpora from ../shared/datasets (skipped with a message when absent).
test-slow: setup
	$(PY) -m pytest -q -m slow

## Fault injection: extract and train killed with SIGKILL at random moments, resumed, checked.
test-faults: setup
	$(PY) -m pytest -q -m faults -p no:cacheprovider

## Every test: the fast suite and all the marked suites.
test-all: setup
	$(PY) -m pytest -q -m ""

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
