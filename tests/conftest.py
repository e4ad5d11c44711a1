"""Session-wide fixtures and hooks of the whole suite (tests/unit and tests/functional).

Why session scope: writing the 33M-parameter checkpoint, building an engine, or
starting ModelScope cost seconds each, and the 2-core machines this runs on are
shared. The real tritonservers (`triton_server`, `tiny_server`, `spare_server`,
`grpc_client`, `server_factory`) are fixtures of tests/functional/conftest.py; a
unit test cannot ask for them (tests/README.md says where a new test goes).

Fixtures:
- `demo_model_dir`: a random-weight checkpoint in ModelScope's layout (DEFAULT_SEED).
- `decisive_model_dir`: the decisive variant (confident answers), for agreement checks.
- `tiny_model_dir`, `tiny_engine`: the tiny architecture of `support/engine_tiny.py`
  (the engine unit tests' network), its checkpoint and its engine in-process; the
  functional tests' `tiny_server` serves the same checkpoint.
- `demo_engine`: the engine in-process on CPU over the demo checkpoint, to compare
  the server's answers with.
- `modelscope_reference`: one ModelScope process for the session's reference jobs
  (its pipeline, checkpoints written and loaded by its `OFAModel`); started on first
  use, so a run without reference tests never imports ModelScope.

Workers: `make test` runs three pytest-xdist workers (`-n 3 --dist loadgroup`). Tests
that share a fixture instance (a session server, the ModelScope process, a module's
own server or virtualenv) are put in one `xdist_group` here (tests/support/sharing.py),
so that it is built once per run, and the `slow` tests are handed out first; each
worker's processes get an equal share of the cores, one thread at least
(`pytest_configure`). Three workers on two cores: the third fills the time the
others wait (server start-ups, polls, subprocesses).

Marks: a test that uses a server fixture is marked `server` here (so that
`-m 'not server'` keeps the tests of the same modules that need none); a test that
starts a server some other way carries `@pytest.mark.server` itself. A test under
tests/unit marked `server` fails before its fixtures are set up: it belongs in
tests/functional.
"""

from __future__ import annotations

import os

# Before anything imports grpc: gRPC's fork support registers pthread_atfork handlers
# whose pre-fork handler waits for every gRPC call in flight. Any fork() in this process
# (a subprocess started with preexec_fn, multiprocessing's fork start method) while
# worker threads retry calls against a server being restarted then blocks for good;
# that is how tests/functional/test_client_resilience.py once hung a whole run. Servers are
# started without a fork (see ofa_ve_ops.server_process), and with fork support off a
# stray fork cannot hang either.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

from collections.abc import Iterator
from pathlib import Path

import pytest
from ofa_ve_ops.server_process import READY_TIMES, STARTS, stop_all
from support.sharing import FixtureUse, worker_groups

SERVER_FIXTURES = frozenset(
    {"triton_server", "tiny_server", "grpc_client", "server_factory", "spare_server"}
)
"""A test (or a fixture it uses) that asks for one of these talks to a real server."""
UNIT_TESTS = Path(__file__).resolve().parent / "unit"
"""Tests without a tritonserver (`make test-unit`); those with one are in functional/."""


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight OFA-tiny checkpoint, written once per session (DEFAULT_SEED: its
    answers cover all three labels)."""
    from ofa_ve_engine.demo_checkpoint import DEFAULT_SEED, write_demo_checkpoint

    return write_demo_checkpoint(
        tmp_path_factory.mktemp("demo-model") / "ofa-tiny-demo", seed=DEFAULT_SEED
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture's checkpoint (``support/engine_tiny.py``), written once."""
    from support.engine_tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "ofa-tiny-tiny")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> object:
    """The engine over the tiny checkpoint on CPU (aten linear layers: no timing)."""
    from ofa_ve_engine import VisualEntailmentEngine

    return VisualEntailmentEngine.from_model_dir(
        tiny_model_dir, device="cpu", linear_backend="aten"
    )


@pytest.fixture(scope="session")
def decisive_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decisive random checkpoint (confident, varied answers), written once per session:
    what precision and fidelity comparisons are measured on."""
    from ofa_ve_engine.demo_checkpoint import write_demo_checkpoint

    return write_demo_checkpoint(
        tmp_path_factory.mktemp("decisive-model") / "ofa-tiny-decisive", decisive=True
    )


@pytest.fixture(scope="session")
def demo_engine(demo_model_dir: Path) -> object:
    """The engine in this process, on CPU, over the session's demo checkpoint."""
    from ofa_ve_engine import VisualEntailmentEngine

    return VisualEntailmentEngine.from_model_dir(demo_model_dir, device="cpu")


@pytest.fixture(scope="session")
def modelscope_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A `ReferenceWorker`: ModelScope's code in a process of its own, started once
    (its imports cost about 9 s) for every reference job of the session."""
    from ofa_ve_reference.worker import ReferenceWorker

    log = tmp_path_factory.mktemp("modelscope-reference") / "worker.log"
    with ReferenceWorker(log_path=log) as worker:
        yield worker


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, give each worker's processes (tests, servers' stubs, the
    ModelScope process: they inherit the environment) an equal share of the cores.

    Why: torch's OpenMP threads, one per core by default, collapse (tens of times
    slower) when another process competes for the same cores."""
    workers = getattr(config.option, "numprocesses", None) or 0  # xdist's -n, in the controller
    if workers > 0 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0))
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // workers))


def _fixture_use(item: pytest.Item) -> FixtureUse:
    """The fixtures `item` uses, with their scopes (pytest's record of its closure)."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs if info is not None else {}
    return FixtureUse(
        nodeid=item.nodeid,
        module=item.path.stem,
        scopes={name: chain[-1].scope for name, chain in defs.items() if chain},
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, and before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `server` exactly the tests that use a server fixture (directly or not), and
    put the tests that share a fixture instance in one `xdist_group` (support/sharing.py)."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
    groups = worker_groups(_fixture_use(item) for item in items)
    for item in items:
        if item.nodeid in groups and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    if getattr(config.option, "loadgroup", False):  # an xdist worker under make test
        # xdist hands out the groups first (largest first), then single tests in this
        # order: the slow ones first, so that none of them is left to run alone at the end.
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(tryfirst=True)  # before its fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test under tests/unit that talks to a tritonserver, saying where it goes."""
    if item.get_closest_marker("server") and UNIT_TESTS in item.path.resolve().parents:
        pytest.fail(
            f"{item.nodeid} talks to a tritonserver: it belongs in tests/functional",
            pytrace=False,
        )


_WORKER_START_UPS: list[tuple[int, list[tuple[str, float]]]] = []
"""What each finished xdist worker reported: (process starts, [(server, s to READY)])."""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Last resort: no tritonserver outlives the session, whatever happened. An xdist
    worker also hands its start-up figures to the controller's summary."""
    stop_all()
    output = getattr(session.config, "workeroutput", None)  # set in xdist workers only
    if output is not None:
        output["tritonserver_start_ups"] = (len(STARTS), list(READY_TIMES))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist's controller: collect a finished worker's start-up figures."""
    reported = getattr(node, "workeroutput", {}).get("tritonserver_start_ups")
    if reported:
        _WORKER_START_UPS.append(reported)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """How many tritonservers the run started, and how long each took to READY."""
    starts = len(STARTS) + sum(count for count, _ in _WORKER_START_UPS)
    ready = list(READY_TIMES)
    ready += [entry for _, entries in _WORKER_START_UPS for entry in entries]
    if starts:
        terminalreporter.section("tritonserver start-ups")
        terminalreporter.write_line(f"{starts} process start(s), {len(ready)} reached READY")
        for server, seconds in ready:
            terminalreporter.write_line(f"{seconds:6.1f} s to READY  {server}")
