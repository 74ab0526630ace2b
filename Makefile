# Two entry points: `make demo` (the main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ponder-installed
TESTED := $(VENV)/.ponder-test-installed

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

# the test extras (pytest; ray for the Ray executor's test) only where tests run: the demo's
# set-up stays small
$(TESTED): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(TESTED)

demo: $(STAMP)
	$(BIN)/ponder demo

test: $(TESTED)
	$(BIN)/python -m pytest -q

test-slow: $(TESTED)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/ponder bench

clean:
	rm -rf $(VENV) build src/*.egg-info
