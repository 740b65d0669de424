# Two commands: `make run` (set up, then the whole MLflow pipeline) and `make test` (set up, then every test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EPOCHS ?= 10
# The oldest MLflow pyproject.toml accepts: `make test` also runs the serving tier against it, in its own venv.
MLFLOW_OLDEST ?= 3.17.0
OLDEST_VENV ?= .venv-mlflow-oldest
SERVING_TESTS := tests/test_serving_limits.py tests/test_guard.py tests/test_serving.py tests/test_serving_numbers.py tests/test_onnx_model.py tests/test_registry.py
# What the tests need from the system: Debian's Chromium drives the real-browser test of the drawing app (no browser
# download); Debian's PostgreSQL is the database of the scale tests (`digits stack up` runs initdb and pg_ctl).
SYSTEM_PACKAGES := chromium postgresql

.PHONY: setup run test test-fast test-mlflow-oldest system-packages lint stack

setup: $(VENV)/.installed

# Reinstall only when the dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# `mlflow run` starts `python` and the scoring server starts `uvicorn` from PATH: put the venv first. The runs land
# in the experiment `digits` (created on first use), as the README says.
run: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mlflow run . --env-manager local --experiment-name digits -P epochs=$(EPOCHS)

# Every test on the newest dependencies, then the serving tier on the oldest MLflow supported.
test: system-packages setup lint $(OLDEST_VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-mlflow-oldest

# The formatter and linter the field uses (configured in pyproject.toml): CI fails on an unformatted file.
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m unit

# The serving tier (the guard, the real `mlflow models serve`, torch and ONNX) on MLflow $(MLFLOW_OLDEST).
test-mlflow-oldest: $(OLDEST_VENV)/.installed
	PATH="$(abspath $(OLDEST_VENV)/bin):$$PATH" $(OLDEST_VENV)/bin/python -m pytest -p no:cacheprovider $(SERVING_TESTS)

# A venv whose own site-packages hold MLflow $(MLFLOW_OLDEST) (and uvicorn's script, so the scoring server starts on
# it), with the main venv's packages (torch, onnxruntime, ...) behind them: only MLflow differs, built in seconds.
$(OLDEST_VENV)/.installed: $(VENV)/.installed
	rm -rf $(OLDEST_VENV)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -c 'import pathlib, site, sys; main = pathlib.Path(sys.argv[1]).resolve(); \
	  own = pathlib.Path(site.getsitepackages()[0]); \
	  (own / "zz_main_venv.pth").write_text(f"import site; site.addsitedir({str(main)!r})\n")' \
	  "$$($(BIN)/python -c 'import site; print(site.getsitepackages()[0])')"
	$(OLDEST_VENV)/bin/python -m pip install -q --no-deps --ignore-installed 'mlflow==$(MLFLOW_OLDEST)' 'mlflow-skinny==$(MLFLOW_OLDEST)' \
	  'mlflow-tracing==$(MLFLOW_OLDEST)' "uvicorn==$$($(BIN)/python -c 'import uvicorn; print(uvicorn.__version__)')"
	$(OLDEST_VENV)/bin/python -c 'import mlflow, torch; assert mlflow.__version__ == "$(MLFLOW_OLDEST)", mlflow.__version__'
	touch $@

# Installs what is missing with apt-get (as root, or with sudo when it needs no password); else stops at once
# with the one command to run.
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -z "$$missing" ] && exit 0; \
	command="apt-get install -y --no-install-recommends$$missing"; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; \
	else echo "make test: the tests need$$missing; run: sudo sh -c 'apt-get update && $$command'" >&2; exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make test: the tests need$$missing (Debian's package names; no apt-get here): install them, then make test" >&2; exit 1; fi; \
	echo "make test: installing$$missing with apt-get"; \
	DEBIAN_FRONTEND=noninteractive $$sudo apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$sudo $$command -qq >/dev/null

# PostgreSQL (databases optuna, mlflow) and an MLflow tracking server for parallel workers; `digits stack status`
# prints what to export, `digits stack down` stops both.
stack: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/digits stack up
