# Two commands for a newcomer: `make demo` and `make test`. Both create the virtual
# environment from the lock file first, so a machine with only Python 3.11+ is enough.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Test processes: most integration tests wait on sockets and timers, so two share two cores
# well (about 17 min instead of 27 here); each file's tests stay in one process (--dist loadfile).
TEST_WORKERS ?= 2

.PHONY: demo test test-fast lint bench lock clean

$(BIN)/sfs-cleanup: pyproject.toml sandbox/pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]" -e ./sandbox
	@touch $@

demo: $(BIN)/sfs-cleanup  ## the whole system against the fake API, in one command
	$(BIN)/sfs-cleanup demo

lint: $(BIN)/sfs-cleanup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	bash deploy/check.sh

test: lint  ## lint, types, deployment checks, then every test (unit, integration, fault)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: $(BIN)/sfs-cleanup
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BIN)/sfs-cleanup  ## the benchmarks; figures go to bench-results/
	$(BIN)/python -m tests.benchmarks

lock:  ## refresh requirements.lock from a clean install of pyproject.toml's ranges
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e ".[dev]" -e ./sandbox
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^sfs-turbo-cleanup' > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bench-results
