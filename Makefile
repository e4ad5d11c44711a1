# One-command entry points. Each target first runs scripts/setup.sh, which creates
# .venv and installs the pinned requirements (cheap when nothing changed), so every
# target works from a fresh clone.
#
#   make serve            real tritonserver in the foreground on 127.0.0.1:8000/8001/8002
#                         (installs only what serving needs: the `serve` profile)
#   make test             the whole suite, including tests against a real tritonserver
#   make lint             ruff
#   make demo-checkpoint  random-weight checkpoint in ModelScope's layout, where
#                         `make serve` looks for it (or DEMO_DIR)
#   make soak             bounded load against a running `make serve` (SOAK_ARGS)
#   make bench            side-by-side benchmark: ModelScope vs engine vs server (CPU or GPU)
#   make gpu-check        the GPU check (CPU mode where there is no GPU; docs/gpu-check.md)
#   make loadtest         perf_analyzer sweeps against a running server (URL)
#
# Make variables: PYTEST_ARGS (e.g. PYTEST_ARGS="-m 'not server'"), TEST_WORKERS (test
# processes, 3; 0 runs the suite in this one), SERVE_ARGS (passed
# to `python -m ofa_ve_ops.serve`, e.g. SERVE_ARGS="-- --log-verbose=1"), DEMO_DIR,
# DEMO_SEED, URL, VENV.
#
# Environment of `make serve` (python -m ofa_ve_ops.serve --help says more):
#   OFA_VE_MODEL_DIR      a ModelScope model directory to serve (default: fetch the
#                         real model from the hub; where it is unreachable, a demo);
#                         linked as model_repository/ofa_visual_entailment/1/weights
#                         (SERVE_ARGS="--model-repository DIR" serves another repository)
#   OFA_VE_MODEL_CACHE    where the fetched model is kept (~/.cache/ofa-ve/modelscope)
#   MODELSCOPE_ENDPOINT   the ModelScope hub (https://modelscope.cn)
#   OFA_VE_BIND_ADDRESS   address every endpoint binds (127.0.0.1)
#   OFA_VE_HTTP_PORT      HTTP port (8000)
#   OFA_VE_GRPC_PORT      gRPC port (8001), the one the client SDK talks to
#   OFA_VE_METRICS_PORT   Prometheus metrics port (8002)
#   OFA_VE_CACHE_DIR      generated files: the demo checkpoint (.cache/)
#   OFA_VE_TRITON_DIR     where tritonserver is laid out from its wheel (.cache/triton/...)
#   OFA_VE_ADMIN_KEY      a key Triton's admin APIs then require (open on loopback
#                         without it); OFA_VE_ADMIN_KEY_FILE: a file holding it. The
#                         container requires one (OFA_VE_ADMIN_OPEN=1 opens them)
# Of the client (`ofa-ve`): OFA_VE_URL, the default --url (127.0.0.1:8001).

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

.PHONY: help setup setup-serve serve test lint demo-checkpoint soak bench gpu-check loadtest

help:
	@sed -n '1,/^$$/{s/^# \{0,1\}//;p}' Makefile

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

lint: setup
	$(VENV)/bin/ruff check .

demo-checkpoint: setup-serve
	$(PYTHON) -m ofa_ve_ops.make_demo_checkpoint $(DEMO_ARGS)

soak: setup
	$(PYTHON) -m ofa_ve_bench.soak $(SOAK_ARGS)

bench: setup
	dir="$$($(PYTHON) -m ofa_ve_ops.make_demo_checkpoint --quiet $(DEMO_ARGS))" && \
	  $(PYTHON) -m ofa_ve_bench.benchmark --model-dir "$$dir" --out-dir .cache/bench \
	  --plot .cache/bench/benchmark.png

# Both parts of the GPU check; on a machine without a GPU, the CPU mode (small sizes,
# "no GPU figures"). On the lent GPU machine the parts run as two device calls
# (docs/gpu-check.md; wheels from `python -m ofa_ve_bench.wheelhouse`).
gpu-check: setup
	$(PYTHON) -m ofa_ve_bench.gpu_check --mode auto --out .cache/gpu-check

loadtest: setup
	$(PYTHON) -m ofa_ve_bench.perf_analyzer_sweep --url $(URL) --out-dir .cache/loadtest
