# `make test` and (later) `make demo` work on a fresh clone: they create .venv and install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo app bench bench-train bench-data bench-processing bench-inference bench-reliability clean

install: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# The whole suite, on two pytest-xdist workers (one per core; tests/conftest.py gives each one thread);
# the 30 slowest tests are listed at the end.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=30

# The edit loop: unit tests, parity with transformers, golden values, invariants; not the `system` tier
# (processes, servers, browsers, exported graphs, benchmarks, the docs' pages).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not system"

# Generate the synthetic dataset, train a small MaskFormer with scripts/train.py, evaluate it (mIoU, PQ),
# draw prediction against ground truth through pipeline("image-segmentation"), then segment held-out images
# with `maskformer-hf segment`; everything lands in $(DEMO_OUT)/. DEMO_FLAGS: extra recipe flags (tests shrink the run).
DEMO_OUT ?= demo_output
DEMO_FLAGS ?=
demo: $(STAMP)
	$(PY) scripts/train.py --config demo --output_dir $(DEMO_OUT) --data_dir $(DEMO_OUT)/data $(DEMO_FLAGS)
	$(PY) scripts/demo_report.py --run $(DEMO_OUT)
	$(VENV)/bin/maskformer-hf segment "$(DEMO_OUT)/data/coco/val2017/synthetic_00000*.jpg" --model $(DEMO_OUT)/model --out $(DEMO_OUT)/segmented --quiet

# The web demo (app.py, Gradio) on the demo checkpoint, trained first by `make demo` when it is missing.
app: $(STAMP) $(DEMO_OUT)/model/config.json
	MASKFORMER_MODEL=$(DEMO_OUT)/model $(PY) app.py

$(DEMO_OUT)/model/config.json:
	$(MAKE) demo

# Speed figures of the README (run on an idle machine; prints ours vs transformers in one run).
bench: $(STAMP)
	$(PY) benchmarks/bench_forward.py

bench-train: $(STAMP)
	$(PY) benchmarks/bench_train_step.py

bench-data: $(STAMP)
	$(PY) benchmarks/bench_data.py

bench-processing: $(STAMP)
	$(PY) benchmarks/bench_processing.py

bench-inference: $(STAMP)
	$(PY) benchmarks/bench_inference.py

# Memory under load: 300 images through the pipeline and the CLI, a 2,000-image evaluation (about 12 min).
bench-reliability: $(STAMP)
	$(PY) benchmarks/bench_reliability.py

clean:
	rm -rf $(VENV) demo_output build *.egg-info src/*.egg-info .pytest_cache
