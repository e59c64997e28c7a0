# Each target is one command. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint lab release pretrain

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet -e '.[dev]' && touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python -m sslkit demo

test: $(INSTALLED)
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check sslkit tests autograder

pretrain: $(INSTALLED)
	$(BIN)/python -m sslkit train simclr --profile laptop --out runs/simclr

lab: $(INSTALLED)
	$(BIN)/jupyter lab notebooks

# nbgrader (autograder/ is the course root; see autograder/README.md)
release: $(INSTALLED)
	$(BIN)/python autograder/course.py release

.PHONY: grade
grade: $(INSTALLED)
	$(BIN)/python autograder/course.py grade $(ASSIGNMENT)
