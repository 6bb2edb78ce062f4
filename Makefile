# lsp-exp: the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false

.PHONY: install run lint test test-slow ui bootstrap calibrate clean

install: $(STAMP)

# torch first (the CPU wheel on disk), then the project, so nothing pulls CUDA builds.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: install
	$(VENV)/bin/lsp-train $(ARGS)

# The linters first (seconds), then the tests: ruff's rules and the layer contract are in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q $(ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(ARGS)

bootstrap: install
	$(VENV)/bin/lsp-bootstrap $(ARGS)

ui: install
	@echo "MLflow UI at http://127.0.0.1:5000: open the link a run printed, or click Model training (top left) once"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs/* .pytest_cache
