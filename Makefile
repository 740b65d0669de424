# Two commands: `make run` (set up, then the whole MLflow pipeline) and `make test` (set up, then every test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EPOCHS ?= 10

.PHONY: setup run test test-fast lint stack

setup: $(VENV)/.installed

# Reinstall only when the dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# `mlflow run` starts `python` and the scoring server starts `uvicorn` from PATH: put the venv first.
run: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mlflow run . --env-manager local -P epochs=$(EPOCHS)

test: setup lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

# The formatter and linter the field uses (configured in pyproject.toml): CI fails on an unformatted file.
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m unit

# PostgreSQL (databases optuna, mlflow) and an MLflow tracking server for parallel workers; `digits stack status`
# prints what to export, `digits stack down` stops both.
stack: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/digits stack up
