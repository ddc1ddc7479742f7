# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install data demo test figures bench gradcheck

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

data: install
	$(PY) -m nnjax.data prepare

demo: data
	$(PY) experiments/mnist_mlp.py

test: data
	$(PY) -m pytest -n 2 -q

gradcheck: install
	$(PY) -m nnjax.gradcheck

figures: install
	$(PY) scripts/figures.py

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) scripts/bench.py
