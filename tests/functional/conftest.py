"""Fixtures of the functional tests: real tritonservers, shared or built per test.

Why shared: starting tritonserver (a stub process that imports torch, loads the
weights and warms up) costs seconds, and the 2-core machines this runs on are
shared. So most tests use one of the session servers below; only tests that need a
server of their own (restarts, kills, TLS, start-up behaviour) build one with
`server_factory(...)`, and tests that need the same special server share one
module-scoped fixture. The checkpoints they serve (`demo_model_dir`,
`tiny_model_dir`) are in tests/conftest.py, shared with the unit tests.

Fixtures:
- `model_repository`: the committed `model_repository/` folder, for own servers.
- `server_factory`: builds a (not yet started) `TritonServer` on `model_repository`
  and `demo_model_dir`; every server it built is stopped at the end of the session.
- `triton_server`: the shared `TritonServer` (READY), on free loopback ports.
- `tiny_server`: a shared server over the tiny checkpoint, for the SDK and CLI tests.
- `spare_server`: a second shared server, for the tests that restart a server or
  unload and reload its model (and round-robin over two servers).
- `grpc_client`: a `tritonclient.grpc.InferenceServerClient` to `triton_server`.

A test that uses any of them (directly or through another fixture) is marked
`server` and put in its server's `xdist_group` by tests/conftest.py (the names are
its SERVER_FIXTURES and tests/support/sharing.py's SESSION_GROUPS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ofa_ve_ops.paths import MODEL_NAME, MODEL_REPOSITORY
from ofa_ve_ops.server_process import TritonServer
from support.servers import running


@pytest.fixture(scope="session")
def model_repository() -> Path:
    """The committed model repository (servers built on it serve `demo_model_dir`)."""
    return MODEL_REPOSITORY


ServerFactory = Callable[..., TritonServer]


@pytest.fixture(scope="session")
def server_factory(
    model_repository: Path, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """`server_factory(cls=TritonServer, model_repository=..., model_dir=..., **kwargs)`:
    a new, not yet started server; by default on the committed repository and the
    demo checkpoint, its log under pytest's temporary folder (kept for the last few
    runs, then removed). Whatever the test does, each is killed when the session ends
    (by PID, with its shared memory: `support.servers.running` says why not stopped)."""
    built: list[TritonServer] = []

    def build(
        cls: type[TritonServer] = TritonServer,
        model_repository: Path = model_repository,
        model_dir: Path = demo_model_dir,
        **kwargs: object,
    ) -> TritonServer:
        kwargs.setdefault("log_dir", tmp_path_factory.mktemp("tritonserver"))
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
