"""Session-wide fixtures: one demo checkpoint and one real tritonserver for the whole run.

Why session scope: writing the 33M-parameter checkpoint and starting tritonserver
(a stub process that imports torch, loads the weights and warms up) cost seconds
each, and the 2-core machines this runs on are shared. Only tests that need a server
of their own (restarts, kills, TLS, start-up behaviour) build one, with
`server_factory(...)`, which serves the same demo checkpoint unless given another
`model_dir`; tests that need the same special server share one module-scoped fixture.

Fixtures:
- `demo_model_dir`: a random-weight checkpoint in ModelScope's layout (DEFAULT_SEED).
- `decisive_model_dir`: the decisive variant (confident answers), for agreement checks.
- `model_repository`: the committed `model_repository/` folder, for own servers.
- `server_factory`: builds a (not yet started) `TritonServer` on `model_repository`
  and `demo_model_dir`; every server it built is stopped at the end of the session.
- `triton_server`: the shared `TritonServer` (READY), on free loopback ports.
- `tiny_model_dir`, `tiny_engine`: the tiny architecture of `engine_tiny.py` (the engine
  unit tests' network), its checkpoint and its engine in-process.
- `tiny_server`: a shared server over that checkpoint, for the SDK and CLI tests.
- `spare_server`: a second shared server, for the tests that restart a server or
  unload and reload its model (and round-robin over two servers).
- `grpc_client`: a `tritonclient.grpc.InferenceServerClient` to it.
- `demo_engine`: the engine in-process on CPU over the same checkpoint, to compare
  the server's answers with.
- `modelscope_reference`: one ModelScope process for the session's reference jobs
  (its pipeline, checkpoints written and loaded by its `OFAModel`); started on first
  use, so a run without reference tests never imports ModelScope.

Workers: `make test` runs three pytest-xdist workers (`-n 3 --dist loadgroup`). Tests
that share a fixture instance (a session server, the ModelScope process, a module's
own server or virtualenv) are put in one `xdist_group` here (tests/sharing.py), so
that it is built once per run, and the `slow` tests are handed out first; each
worker's processes get an equal share of the cores, one thread at least
(`pytest_configure`). Three workers on two cores: the third fills the time the
others wait (server start-ups, polls, subprocesses).

Marks: a test that uses a server fixture is marked `server` here (so that
`-m 'not server'` keeps the pure unit tests of the same modules); a test that starts
a server some other way carries `@pytest.mark.server` itself.
"""

from __future__ import annotations

import os

# Before anything imports grpc: gRPC's fork support registers pthread_atfork handlers
# whose pre-fork handler waits for every gRPC call in flight. Any fork() in this process
# (a subprocess started with preexec_fn, multiprocessing's fork start method) while
# worker threads retry calls against a server being restarted then blocks for good;
# that is how tests/test_client_resilience.py once hung a whole run. Servers are
# started without a fork (see ofa_ve_ops.server_process), and with fork support off a
# stray fork cannot hang either.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ofa_ve_ops.paths import MODEL_NAME, MODEL_REPOSITORY
from ofa_ve_ops.server_process import READY_TIMES, STARTS, TritonServer, stop_all
from servers import running
from sharing import FixtureUse, worker_groups

SERVER_FIXTURES = frozenset(
    {"triton_server", "tiny_server", "grpc_client", "server_factory", "spare_server"}
)
"""A test (or a fixture it uses) that asks for one of these talks to a real server."""


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
    """The tiny architecture's checkpoint (``engine_tiny.py``), written once per session."""
    from engine_tiny import write_tiny_model_dir

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
def model_repository() -> Path:
    """The committed model repository (servers built on it serve `demo_model_dir`)."""
    return MODEL_REPOSITORY


ServerFactory = Callable[..., TritonServer]


@pytest.fixture(scope="session")
def server_factory(model_repository: Path, demo_model_dir: Path) -> Iterator[ServerFactory]:
    """`server_factory(cls=TritonServer, model_repository=..., model_dir=..., **kwargs)`:
    a new, not yet started server; by default on the committed repository and the
    demo checkpoint. Whatever the test does, each is killed when the session ends
    (by PID, with its shared memory: `servers.running` says why not stopped)."""
    built: list[TritonServer] = []

    def build(
        cls: type[TritonServer] = TritonServer,
        model_repository: Path = model_repository,
        model_dir: Path = demo_model_dir,
        **kwargs: object,
    ) -> TritonServer:
        server = cls(model_repository, model_dir, **kwargs)
        built.append(server)
        return server

    yield build
    for server in built:
        server.kill()


@pytest.fixture(scope="session")
def triton_server(server_factory: ServerFactory) -> Iterator[TritonServer]:
    """One tritonserver for the session: the real model repository, the demo weights."""
    with running(server_factory()) as server:  # started, READY; killed at the end
        yield server


@pytest.fixture(scope="session")
def tiny_server(server_factory: ServerFactory, tiny_model_dir: Path) -> Iterator[TritonServer]:
    """A session server over the tiny checkpoint, for the tests of the client SDK and CLI.

    They check what the client sends, receives and reports (order, splitting into
    requests, per-item errors, files, retries), which the real serving path shows
    over a tiny network as well as over OFA-tiny's 33M parameters, in milliseconds
    per item instead of about 0.3 s of CPU. What depends on the real network's size
    or time (parity, queueing, drains, load) stays on `triton_server`."""
    with running(server_factory(model_dir=tiny_model_dir)) as server:
        yield server


@pytest.fixture(scope="session")
def spare_server(server_factory: ServerFactory) -> Iterator[TritonServer]:
    """A second server for the session, for the tests that must disturb one: restart it
    (`stop()` or `kill()`, then `start()`: same ports), or unload and reload its model
    (explicit model control; the model is loaded at start). Each such test leaves it
    READY with the model loaded; a round-robin test uses it as the other server."""
    spare = server_factory(model_control_mode="explicit", load_models=[MODEL_NAME])
    with running(spare) as server:  # started, READY; killed at the end
        yield server


@pytest.fixture(scope="session")
def grpc_client(triton_server: TritonServer) -> Iterator[object]:
    """A plain tritonclient gRPC client to the session server."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def demo_engine(demo_model_dir: Path) -> object:
    """The engine in this process, on CPU, over the session's demo checkpoint."""
    from ofa_ve_engine import VisualEntailmentEngine

    return VisualEntailmentEngine.from_model_dir(demo_model_dir, device="cpu")


@pytest.fixture(scope="session")
def modelscope_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A `ReferenceWorker`: ModelScope's code in a process of its own, started once
    (its imports cost about 9 s) for every reference job of the session."""
    from ofa_ve_bench.reference.worker import ReferenceWorker

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
    put the tests that share a fixture instance in one `xdist_group` (tests/sharing.py)."""
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
