# Two commands do all the set-up on a fresh machine (Python 3.11+):
#   make book   builds the book into _build/html
#   make test   runs the package tests, every chapter under nbval, and the book build
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
# The script the book serves itself (MathJax), locked in package-lock.json.
JS     := node_modules/.package-lock.json

.PHONY: install lint test test-fast test-oldest book notebooks clean

install: $(STAMP) $(JS)

$(JS): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $@

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

test: install lint
	$(BIN)/python -m pytest

test-fast: install lint
	$(BIN)/python -m pytest -m "not slow and not book" tests

# Every chapter under nbval on the oldest versions pyproject.toml declares, in .venv-oldest: the runtime
# dependencies and the book extra pinned to their lower bounds by constraints-oldest.txt (written by
# `python -m tools.oldest`), except torch, which stays at 2.13.0 (every other torch wheel on PyPI
# for Linux is a multi-GB CUDA build). Not part of `make test`; takes a few minutes.
OLDEST       := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed-$(shell cat constraints-oldest.txt pyproject.toml | cksum | cut -d' ' -f1)
RUNNER       := $(shell grep -E '^(pytest|nbval)==' requirements.txt)

$(OLDEST_STAMP): constraints-oldest.txt pyproject.toml
	rm -rf $(OLDEST)
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet -r constraints-oldest.txt $(RUNNER)
	$(OLDEST)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

test-oldest: $(OLDEST_STAMP)
	$(OLDEST)/bin/python -m tools.oldest --check
	$(OLDEST)/bin/python -m pip list --format=freeze | grep -iE '^(torch|transformers|tokenizers|numpy|pillow|matplotlib|ipywidgets|ipykernel)=='
	$(OLDEST)/bin/python -m pytest book

# ruff, configured in pyproject.toml: lint rules, and the formatter's check (it changes nothing)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

book: install
	$(BIN)/jupyter-book build . -W --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

# Re-execute chapters in place (outputs and timings are saved): make notebooks [NB=book/x.ipynb]
notebooks: install
	$(BIN)/python -m tools.execute_notebooks $(NB)

clean:
	rm -rf _build
