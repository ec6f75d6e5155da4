# The project's commands. Each creates .venv and installs the pinned requirements when needed
# (again whenever a requirements file changes), so they work on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BENCH_DATABASE := arb_bench
PYTEST_ARGS ?=

.PHONY: demo test lint bench services venv

venv: $(INSTALLED)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

## demo: the whole system on simulated venues, on paper (Ctrl-C stops it)
demo: $(INSTALLED)
	DEBUG="$${DEBUG:-1}" $(PY) manage.py demo

## test: the test suite against real PostgreSQL and Redis (started here when stopped)
test: $(INSTALLED) services
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: ruff (lint and format) and mypy
# mypy's Django plugin loads the settings, which refuse to start without a SECRET_KEY unless DEBUG
# is on: for reading the models' types, DEBUG is on.
lint: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	DEBUG=1 $(PY) -m mypy

## bench: listener and storage benchmarks (PostgreSQL database $(BENCH_DATABASE) unless DATABASE_URL is set)
bench: $(INSTALLED)
	if [ -z "$${DATABASE_URL:-}" ]; then bash scripts/services.sh --database $(BENCH_DATABASE); \
	else bash scripts/services.sh; fi
	export DEBUG="$${DEBUG:-1}" DATABASE_URL="$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$(BENCH_DATABASE)}"; \
	$(PY) manage.py migrate --verbosity 0 && \
	$(PY) manage.py bench listener && \
	$(PY) manage.py bench storage

services:
	bash scripts/services.sh
