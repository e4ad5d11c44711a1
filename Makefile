# One-command entry points. Each target first runs scripts/setup.sh, which creates
# .venv and installs the pinned requirements (cheap when nothing changed), so every
# target works from a fresh clone.
#
#   make serve            real tritonserver in the foreground on 127.0.0.1:8000/8001/8002
#                         (installs only what serving needs: the `serve` profile)
#   make test             the whole suite: tests/unit and tests/functional (a real
#                         tritonserver); what CI runs (.ci/run)
#   make test-unit        tests/unit without its `slow` tests: no tritonserver, about a minute
#                         (tests/README.md: the layout, and how to add a test)
#   make lint             ruff
#   make demo-checkpoint  random-weight checkpoint in ModelScope's layout, where
#                         `make serve` looks for it (or DEMO_DIR)
#   make soak             bounded load against a running `make serve` (SOAK_ARGS)
#   make bench            side-by-side benchmark: ModelScope vs engine vs server (CPU or GPU)
#   make gpu-check        the GPU check (CPU mode where there is no GPU; docs/gpu-check.md)
#   make gpu-rehearsal    the GPU check's device call, verbatim, on a Python shaped like
#                         the GPU machine's, network off (downloads ~3 GB once)
#   make loadtest         perf_analyzer sweeps against a running server (URL)
#
# Make variables: PYTEST_ARGS (e.g. PYTEST_ARGS="-m 'not server'" or
# PYTEST_ARGS=tests/functional/test_server.py), TEST_WORKERS (test
# processes, 3; 0 runs the suite in this one), SERVE_ARGS (passed
# to `python -m ofa_ve_ops.serve`, e.g. SERVE_ARGS="-- --log-verbose=1"), DEMO_DIR,
# DEMO_SEED, URL, VENV.

SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
# pytest-xdist workers (3 on 2 cores: one fills the others' waits); tests/conftest.py
# keeps the tests sharing a server in one (--dist loadgroup) and splits the cores
# between the workers' torch threads.
TEST_WORKERS ?= 3
SERVE_ARGS ?=
SOAK_ARGS ?=
URL ?= 127.0.0.1:8001
# Empty: where `make serve` keeps it ($OFA_VE_CACHE_DIR or .cache/, demo-checkpoint-seed<N>).
DEMO_DIR ?=
# Empty: the demo writer's DEFAULT_SEED (the same checkpoint the tests and `make serve` use).
DEMO_SEED ?=
DEMO_ARGS = $(if $(DEMO_DIR),--out $(DEMO_DIR)) $(if $(DEMO_SEED),--seed $(DEMO_SEED))

.PHONY: help setup setup-serve serve test test-unit lint demo-checkpoint soak bench gpu-check gpu-rehearsal loadtest

help:
	@sed -n '1,/^$$/{s/^# \{0,1\}//;p}' Makefile
	@python3 scripts/ofa_ve_ops/environment.py

setup:
	scripts/setup.sh --venv $(VENV) --profile dev

setup-serve:
	scripts/setup.sh --venv $(VENV) --profile serve

# Only what serving needs (engine, tritonserver, the hub client for the download).
serve: setup-serve
	$(PYTHON) -m ofa_ve_ops.serve $(SERVE_ARGS)

# pytest's own exit status fails the target, 5 ("no tests collected") included.
test: setup
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The unit tests (no tritonserver) without the `slow` ones (ModelScope's reference,
# torch.compile, the decisive checkpoint): those run in `make test`. All of tests/unit:
# make test PYTEST_ARGS=tests/unit.
test-unit: setup
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow" tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

demo-checkpoint: setup-serve
	$(PYTHON) -m ofa_ve_ops.make_demo_checkpoint $(DEMO_ARGS)

soak: setup
	$(PYTHON) -m ofa_ve_bench.soak $(SOAK_ARGS)

bench: setup
	dir="$$($(PYTHON) -m ofa_ve_ops.make_demo_checkpoint --quiet $(DEMO_ARGS))" && \
	  $(PYTHON) -m ofa_ve_bench.benchmark --model-dir "$$dir" --out-dir .cache/bench

# Both parts of the GPU check; on a machine without a GPU, the CPU mode (small sizes,
# "no GPU figures"). On the lent GPU machine it runs as one device call
# (docs/gpu-check.md; `python -m ofa_ve_bench.wheelhouse --calls-json`).
gpu-check: setup
	$(PYTHON) -m ofa_ve_bench.gpu_check --mode auto --out .cache/gpu-check

# That device call, rehearsed here before a GPU window (not part of `make test`).
gpu-rehearsal: setup
	$(PYTHON) -m ofa_ve_bench.gpu_rehearsal

loadtest: setup
	$(PYTHON) -m ofa_ve_bench.perf_analyzer_sweep --url $(URL) --out-dir .cache/loadtest
