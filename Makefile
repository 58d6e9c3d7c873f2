# The two commands of the README. Both set up a virtual environment in .venv first:
# torch 2.13.0 (the CPU build on these machines) before the project, so no CUDA build is pulled.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/toy

.PHONY: setup demo lint test test-all

$(BIN)/didr: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/didr

setup: $(BIN)/didr

demo: setup  ## the main job: the toy experiment on its default (fast preset, all methods)
	$(BIN)/didr toy --out $(OUT)

lint: setup  ## the linter and the layers contract (pyproject.toml)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports --no-cache

test: lint  ## the linter, the layers contract, then the fast suite (slow tests excluded)
	$(BIN)/python -m pytest -q

test-all: lint  ## everything, slow tests included
	$(BIN)/python -m pytest -q -m ''
