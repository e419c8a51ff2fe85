# tutorloop — the two commands: `make demo` runs the product, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test install lint fmt migrate seed demo-model browsers clean-var

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found); set PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU build; a bare requirement would pull a multi-GB CUDA build), then the project.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo

demo-model: install
	$(BIN)/python -m rlhf demo-model ensure

demo: seed demo-model
	@$(BIN)/python -c "from serving.config import admin_token; admin_token()"  # web, worker and endpoint share it
	@echo "Starting web (http://127.0.0.1:8000), Celery worker and beat, and the model endpoint. Ctrl-C stops all."
	@echo "(one web process; to scale: honcho -f Procfile.prod start, WEB_CONCURRENCY workers, see docs/performance.md)"
	$(BIN)/honcho -f Procfile start

lint: install
	$(BIN)/ruff check .

fmt: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

browsers:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium could not be installed: browser tests will be skipped"

clean-var:
	rm -rf var/celery var/cache var/test_db.sqlite3*
