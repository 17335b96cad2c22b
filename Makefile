# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv, install the CPU build of torch first (a plain `torch` requirement would pull a
# multi-GB CUDA build), then this package with its test and plot extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-min lint bench docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,plot]"
	touch $@

demo: setup
	$(PY) -m sk_fastif.demo

test: setup
	$(PY) -m pytest -q

# The test suite at the declared minimum versions (.ci/min-versions.txt), in its own venv,
# without the tests marked slow (gallery and README runs, memory subprocesses).
MIN_VENV ?= .venv-min
test-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

$(MIN_VENV)/.installed: pyproject.toml .ci/min-versions.txt
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -m pip install --quiet "torch==2.13.0"
	$(MIN_VENV)/bin/python -m pip install --quiet -c .ci/min-versions.txt -e ".[test,plot]"
	touch $@

lint: setup
	$(VENV)/bin/ruff check sk_fastif tests benchmarks examples

bench: setup
	$(PY) benchmarks/bench_core.py

# The HTML docs in docs/_build/html, warnings as errors, with the gallery: every examples/plot_*.py
# is executed and its figures rendered (CI builds with the gallery off; tests run the examples).
# SPHINXOPTS="-D plot_gallery=0" builds without executing them.
SPHINXOPTS ?=
docs: $(VENV)/.docs-installed
	$(PY) -m sphinx -b html -W --keep-going $(SPHINXOPTS) docs docs/_build/html

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $@

clean:
	rm -rf $(VENV) $(MIN_VENV) build dist *.egg-info .pytest_cache
