# Set-up is part of every target: the virtual environment is created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo/pad-ufes-20

.PHONY: install demo test test-all test-cluster bench clean

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

# Real SLURM jobs on a one-node cluster started on this machine (scripts/slurm-cluster.sh; root, apt-get), on the
# CPU: time-limit requeue and resume, scontrol requeue, scancel, a 2-task DDP point, max_num_timeout=0. Without a
# cluster it says why and succeeds. Ends with each case, the attempts in its run.json and its time.
CLUSTER_SCRIPT ?= scripts/slurm-cluster.sh
CLUSTER_TMP ?= /tmp/skinlesion-test-cluster
CLUSTER_SUMMARY ?= $(CLUSTER_TMP).summary
test-cluster: $(VENV)/.installed
	@start=$$(date +%s); \
	out=$$(bash $(CLUSTER_SCRIPT) 2>&1); rc=$$?; echo "$$out"; \
	if [ $$rc -eq 3 ]; then \
		echo "test-cluster: skipped: $$(echo "$$out" | sed -n 's/^slurm-cluster: cannot start: //p' | tail -n 1)"; exit 0; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	rm -f $(CLUSTER_SUMMARY); \
	SKINLESION_CLUSTER_TESTS=1 SKINLESION_CLUSTER_SUMMARY=$(CLUSTER_SUMMARY) \
		$(PY) -m pytest -q -m cluster tests/cluster -p no:cacheprovider \
		--basetemp=$(CLUSTER_TMP) $(PYTEST_ARGS); rc=$$?; \
	echo "test-cluster: cases (outcome, seconds from the sweep's start, attempts in run.json; files in $(CLUSTER_TMP)):"; \
	cat $(CLUSTER_SUMMARY) 2>/dev/null || echo "  (no case ran)"; \
	echo "test-cluster: $$(( $$(date +%s) - start )) s in all, pytest exit code $$rc"; \
	exit $$rc

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_throughput.py
	$(PY) benchmarks/bench_weight_search.py

clean:
	rm -rf outputs .cache/images data/demo
