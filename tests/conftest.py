"""Session-wide fixtures: one demo checkpoint and one real tritonserver for the whole run.

Why session scope: writing the 33M-parameter checkpoint and starting tritonserver
(a stub process that imports torch, loads the weights and warms up) cost seconds
each, and the 2-core machines this runs on are shared. Tests that need a server
of their own (restarts, TLS, start-up behaviour) build one with
`triton_server.TritonServer(model_repository)`, which serves the same demo
checkpoint unless given another `model_dir`.

Fixtures:
- `demo_model_dir`: a random-weight checkpoint in ModelScope's layout (DEFAULT_SEED).
- `model_repository`: the committed `model_repository/` folder, for own servers.
- `triton_server`: the shared `TritonServer` (READY), on free loopback ports.
- `grpc_client`: a `tritonclient.grpc.InferenceServerClient` to it.
- `demo_engine`: the engine in-process on CPU over the same checkpoint, to compare
  the server's answers with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ofa_ve_ops.paths import MODEL_REPOSITORY
from ofa_ve_ops.server_process import READY_TIMES, TritonServer, stop_all


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight OFA-tiny checkpoint, written once per session (DEFAULT_SEED: its
    answers cover all three labels)."""
    from ofa_ve_engine.demo_checkpoint import DEFAULT_SEED, write_demo_checkpoint

    path = write_demo_checkpoint(
        tmp_path_factory.mktemp("demo-model") / "ofa-tiny-demo", seed=DEFAULT_SEED
    )
    TritonServer.default_model_dir = path
    return path


@pytest.fixture(scope="session")
def model_repository(demo_model_dir: Path) -> Path:
    """The committed model repository; servers built on it serve `demo_model_dir`."""
    return MODEL_REPOSITORY


@pytest.fixture(scope="session")
def triton_server(model_repository: Path, demo_model_dir: Path) -> Iterator[TritonServer]:
    """One tritonserver for the session: the real model repository, the demo weights."""
    server = TritonServer(model_repository, demo_model_dir)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Last resort: no tritonserver outlives the session, whatever happened."""
    stop_all()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """How many tritonservers the run started, and how long each took to READY."""
    if READY_TIMES:
        terminalreporter.section("tritonserver start-ups")
        for server, seconds in READY_TIMES:
            terminalreporter.write_line(f"{seconds:6.1f} s to READY  {server}")
