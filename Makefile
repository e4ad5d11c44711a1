# One-command entry points. Each target first runs scripts/setup.sh, which creates
# .venv and installs the pinned requirements (cheap when nothing changed), so every
# target works from a fresh clone.
#
#   make serve            real tritonserver in the foreground on 127.0.0.1:8000/8001/8002
#   make test             the whole suite, including tests against a real tritonserver
#   make lint             ruff
#   make demo-checkpoint  random-weight checkpoint in ModelScope's layout (DEMO_DIR)
#   make soak             bounded load against a running `make serve` (SOAK_ARGS)
#   make bench            side-by-side benchmark: ModelScope vs engine vs server (CPU or GPU)
#   make bench-gpu        everything on a GPU machine (scripts/gpu_benchmark.sh)
#   make loadtest         perf_analyzer sweeps against a running server (URL)
#
# Variables: PYTEST_ARGS (e.g. PYTEST_ARGS="-m 'not server'"), SERVE_ARGS (passed to
# scripts/serve.py, e.g. SERVE_ARGS="-- --log-verbose=1"), DEMO_DIR, DEMO_SEED, VENV.

SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
SERVE_ARGS ?=
SOAK_ARGS ?=
URL ?= 127.0.0.1:8001
DEMO_DIR ?= .cache/demo-checkpoint
DEMO_SEED ?= 0

.PHONY: help setup setup-serve serve test lint demo-checkpoint soak bench bench-gpu loadtest

help:
	@sed -n '1,/^$$/{s/^# \{0,1\}//;p}' Makefile

setup:
	scripts/setup.sh --venv $(VENV) --profile dev

setup-serve:
	scripts/setup.sh --venv $(VENV) --profile serve

# The dev profile: scripts/fetch_model.py needs ModelScope's hub client (modelscope),
# which the lean serve profile (engine + tritonserver) does not install.
serve: setup
	$(PYTHON) scripts/serve.py $(SERVE_ARGS)

# pytest's own exit status fails the target, 5 ("no tests collected") included.
test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

demo-checkpoint: setup-serve
	$(PYTHON) scripts/make_demo_checkpoint.py --out $(DEMO_DIR) --seed $(DEMO_SEED)

soak: setup
	$(PYTHON) scripts/soak.py $(SOAK_ARGS)

bench: setup
	$(PYTHON) scripts/make_demo_checkpoint.py --out $(DEMO_DIR) --seed $(DEMO_SEED)
	$(PYTHON) scripts/benchmark.py --model-dir $(DEMO_DIR) --out-dir .cache/bench --plot .cache/bench/benchmark.png

bench-gpu: setup
	scripts/gpu_benchmark.sh

loadtest: setup
	$(PYTHON) scripts/perf_analyzer_sweep.py --url $(URL) --out-dir .cache/loadtest
