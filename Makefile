# Each target is one command. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint lab release pretrain bench gpu-kit

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet -e '.[dev]' && touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python -m sslkit demo

test: $(INSTALLED) sandbox
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check sslkit tests autograder

pretrain: $(INSTALLED)
	$(BIN)/python -m sslkit train simclr --profile laptop --out runs/simclr

# sslkit bench in its own environment, where lightly is installed (never a dependency of
# sslkit): SimCLR images/s for the device path, the DataLoader path, lightly, the model alone.
BENCH_VENV := .bench-venv
bench:
	$(PYTHON) -m venv $(BENCH_VENV) && $(BENCH_VENV)/bin/pip install --quiet lightly kornia -e . && \
		$(BENCH_VENV)/bin/python -m sslkit bench $(BENCH_ARGS)

# What a GPU lease carries (.gpu/, git-ignored): CIFAR-10 repacked losslessly, the bench wheels
# (docs/gpu.md; needs ../shared/data and PyPI)
gpu-kit:
	$(PYTHON) tests/gpu/device_checks.py kit

lab: $(INSTALLED)
	$(BIN)/jupyter lab notebooks

# nbgrader (autograder/ is the course root; see autograder/README.md)
release: $(INSTALLED)
	$(BIN)/python autograder/course.py release

.PHONY: grade run bench-grading sandbox
grade: $(INSTALLED) sandbox
	$(BIN)/python autograder/course.py grade $(ASSIGNMENT)

# The whole grading run: make run ASSIGNMENT=04_simclr ZIP=submissions.zip WORKERS=2
run: $(INSTALLED) sandbox
	$(BIN)/python autograder/course.py run $(ASSIGNMENT) $(if $(ZIP),--zip $(ZIP)) --workers $(or $(WORKERS),2)

# Plain nbgrader vs the parallel grader on the same submissions (prints both times, the ratio)
bench-grading: $(INSTALLED) sandbox
	$(BIN)/python autograder/bench_grading.py $(BENCH_ARGS)

# Autograding runs student code in bubblewrap (autograder/sandbox.py); as root, install it.
sandbox:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -qq bubblewrap || { apt-get update -qq && apt-get install -y -qq bubblewrap; }; }; } || \
		{ echo "bubblewrap is missing: run apt-get install bubblewrap as root"; exit 1; }
