# Set-up is part of every target: the virtual environment is created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo/pad-ufes-20

.PHONY: install demo test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(DEMO_DATA)/metadata.csv: | $(VENV)/.installed
	$(PY) -m skinlesion.data.synthetic --layout pad_ufes --out $(DEMO_DATA) --n 900 --size 64 --seed 0

# Generated PAD-UFES-20-layout data -> a short CPU training run -> TTA evaluation -> results table.
demo: $(VENV)/.installed $(DEMO_DATA)/metadata.csv
	$(PY) train.py experiment=demo

# Fast suite (under 5 minutes on 2 cores); `make test-all` adds the runs marked slow. Two test workers, one per
# core; a test module stays on one worker, so its shared fixtures are built once.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "" -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_throughput.py
	$(PY) benchmarks/bench_weight_search.py

clean:
	rm -rf outputs .cache/images data/demo
