# Two commands do all the set-up on a fresh machine (Python 3.11+):
#   make book   builds the book into _build/html
#   make test   runs the package tests, every chapter under nbval, and the book build
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
# The scripts the book serves itself (widget manager, require.js, MathJax), locked in package-lock.json.
JS     := node_modules/.package-lock.json

.PHONY: install lint test test-fast book notebooks clean

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
