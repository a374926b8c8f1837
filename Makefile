# Two commands for a fresh machine (Python 3.10+ and access to the package index):
#   make demo   set up .venv and run the whole pipeline on a small built-in default (CPU)
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Pinned so pip never pulls multi-GB CUDA wheels by accident. On a CPU-only machine without a local
# wheel, use PyTorch's CPU index:  make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# Where torch >= 2.11 is already installed system-wide:  make setup TORCH=
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install -q $(TORCH))
	$(BIN)/python -m pip install -q -e '.[dev,data]'
	touch $(STAMP)

demo: setup
	$(BIN)/scratchlm speedrun

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/tokenizer.py

clean:
	rm -rf $(VENV) runs
