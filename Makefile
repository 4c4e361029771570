# Two commands do all set-up on a fresh machine:
#   make up    installs what is missing and brings up the seed lab (netns runtime); `labnet up` prints its status
#   make test  installs what is missing and runs the whole suite through tox
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEED := topologies/seed.yaml

.PHONY: up down test sysdeps venv lint type unit lab bench clean

# `labnet up` prints the lab's status table itself: no second `labnet status`.
up: sysdeps venv
	$(BIN)/labnet up $(SEED)

down: venv
	$(BIN)/labnet down --all

test: sysdeps venv
	$(BIN)/tox

sysdeps:
	@bash tools/sysdeps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

unit: venv
	$(BIN)/pytest tests/unit -q

lab: sysdeps venv
	$(BIN)/pytest tests/lab -q

lint: venv
	$(BIN)/ruff check labnet tests bench conftest.py

type: venv
	$(BIN)/mypy labnet

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache *.egg-info
