# `make test` and (later) `make demo` work on a fresh clone: they create .venv and install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test bench bench-train clean

install: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Speed figures of the README (run on an idle machine; prints ours vs transformers in one run).
bench: $(STAMP)
	$(PY) benchmarks/bench_forward.py

bench-train: $(STAMP)
	$(PY) benchmarks/bench_train_step.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
