# Each target is one command. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint lab release pretrain bench

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

# sslkit bench in its own environment, where lightly is installed (never a dependency of
# sslkit): SimCLR images/s for the device path, the DataLoader path, lightly, the model alone.
BENCH_VENV := .bench-venv
bench:
	$(PYTHON) -m venv $(BENCH_VENV) && $(BENCH_VENV)/bin/pip install --quiet lightly -e . && \
		$(BENCH_VENV)/bin/python -m sslkit bench $(BENCH_ARGS)

lab: $(INSTALLED)
	$(BIN)/jupyter lab notebooks

# nbgrader (autograder/ is the course root; see autograder/README.md)
release: $(INSTALLED)
	$(BIN)/python autograder/course.py release

.PHONY: grade
grade: $(INSTALLED)
	$(BIN)/python autograder/course.py grade $(ASSIGNMENT)
