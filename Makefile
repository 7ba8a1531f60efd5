# Two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Two pytest-xdist workers, each taking whole modules (their brokers, emulators and
# fleets are module fixtures, and some modules run in order): most tests wait on
# daemons, brokers and PostgreSQL, so two workers about halve the wall time. Modules
# go out in collection order, the slow ones first (tests/conftest.py), not xdist's
# most-tests-first: that left the one-test benchmark smoke run for the very end.
TEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: run test venv venv-test lint bench emulate clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml constraints.txt
	$(PIP) install -c constraints.txt -e '.[test]'
	touch $@

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

run: venv
	$(VENV)/bin/bgmock-twin run

emulate: venv
	$(VENV)/bin/bgmock-twin emulate

test: venv-test
	tests/setup-components.sh
	$(VENV)/bin/python -m pytest -q $(TEST_ARGS)

lint: venv-test
	$(VENV)/bin/ruff check bgmock_twin tests
	$(VENV)/bin/mypy bgmock_twin

bench: venv-test
	$(PIP) install -c constraints.txt -e '.[test,bench]'
	$(VENV)/bin/python -m tests.benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
