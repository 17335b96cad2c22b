# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv, install the CPU build of torch first (a plain `torch` requirement would pull a
# multi-GB CUDA build), then this package with its test and plot extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

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

lint: setup
	$(VENV)/bin/ruff check sk_fastif tests benchmarks examples

bench: setup
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
