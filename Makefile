# ART: two commands for a new user — `make train` and `make test` (both install first).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train eval test test-gpu lint format mlflow-ui clean

install: $(VENV)/.installed

# Idempotent: reinstalls only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

train: install
	$(VENV)/bin/art-train $(ARGS)

# Evaluates the text-only baseline, the seed image and the newest outputs/*/art.png (if any).
LATEST_ART := $(lastword $(sort $(wildcard outputs/*/art.png)))
eval: install
	$(VENV)/bin/art-eval 'eval.conditions=[none,seed$(if $(LATEST_ART),$(comma)$(LATEST_ART))]' $(ARGS)

comma := ,

test: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-gpu: install
	$(VENV)/bin/pytest -m gpu $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs mlruns mlartifacts mlflow.db .pytest_cache
