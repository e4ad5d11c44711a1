"""scripts/ofa_ve_ops/triton_runtime.py and scripts/ofa_ve_ops/serve.py without starting a server.

The runtime's layout is checked by running what it laid out (the stub's and
perf_analyzer's libraries resolve); serve.py's help, port/address handling and
its refusal of a missing model directory by running the script. Starting a real
server from serve.py is in test_server.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from ofa_ve_ops import triton_runtime
from ofa_ve_ops.paths import MODEL_NAME
from ofa_ve_ops.triton_runtime import GrpcTls, Ports, prepare_runtime, server_command, server_env
from support.repositories import copy_repository

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE = "ofa_ve_ops.serve"
RUNTIME = "ofa_ve_ops.triton_runtime"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=120
    )


def serve_dry_run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``serve --dry-run`` with ``args``: what it would link and run, nothing started."""
    return run("-m", SERVE, "--dry-run", *args, env=env)


def _ldd_missing(binary: Path, env: dict[str, str]) -> list[str]:
    out = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if "not found" in line]


def test_layout_is_complete_and_its_binaries_resolve_their_libraries(tmp_path: Path) -> None:
    runtime = prepare_runtime(tmp_path / "triton")
    assert os.access(runtime.server, os.X_OK)
    assert os.access(runtime.stub, os.X_OK)
    assert (runtime.backend_dir / "python" / "libtriton_python.so").is_file()
    assert (runtime.cache_dir / "local").is_dir()
    libpython = runtime.lib_dir / f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    assert libpython.resolve() == triton_runtime.find_libpython()
    env = server_env(runtime)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    for binary in (
        runtime.server,
        runtime.stub,
        runtime.backend_dir / "python" / "libtriton_python.so",
    ):
        assert _ldd_missing(binary, env) == [], binary
    # The stub embeds exactly this interpreter's libpython, not another patch release.
    ldd = subprocess.run(["ldd", str(runtime.stub)], env=env, capture_output=True, text=True)
    assert str(runtime.lib_dir / libpython.name) in ldd.stdout


def test_concurrent_preparation_gives_one_complete_layout(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    with ThreadPoolExecutor(3) as pool:
        roots = list(pool.map(lambda _: prepare_runtime(target).root, range(3)))
    assert set(roots) == {target.resolve()}
    assert prepare_runtime(target).stub.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no staging left


def test_perf_analyzer_runs_in_the_runtime_environment() -> None:
    out = run("-m", RUNTIME, "exec", "--", "perf_analyzer", "--version")
    assert out.returncode == 0, out.stderr
    assert "2.51.0" in out.stdout + out.stderr


def test_env_prints_shell_exports() -> None:
    out = run("-m", RUNTIME, "env")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split("=")[0] for line in lines] == ["export LD_LIBRARY_PATH", "export PATH"]
    assert "nvidia_pytriton.libs" in lines[0]


def test_server_command_flags(tmp_path: Path) -> None:
    runtime = prepare_runtime()
    cpu = server_command(runtime, tmp_path, ports=Ports(1, 2, 3), gpu=False)
    assert "--pinned-memory-pool-byte-size=0" in cpu
    for flag in (
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--http-port=1",
        "--grpc-port=2",
        "--metrics-port=3",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        f"--backend-directory={runtime.backend_dir}",
        f"--model-repository={tmp_path.resolve()}",
    ):
        assert flag in cpu
    gpu = server_command(runtime, tmp_path, gpu=True, address="0.0.0.0")
    assert "--pinned-memory-pool-byte-size=0" not in gpu
    assert "--grpc-address=0.0.0.0" in gpu

    tls = GrpcTls(tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem", mutual=True)
    with_tls = server_command(runtime, tmp_path, grpc_tls=tls)
    assert "--grpc-use-ssl=true" in with_tls and "--grpc-use-ssl-mutual=true" in with_tls
    assert f"--grpc-root-cert={tmp_path / 'ca.pem'}" in with_tls
    with pytest.raises(ValueError, match="root certificate"):
        server_command(
            runtime, tmp_path, grpc_tls=GrpcTls(tls.server_cert, tls.server_key, None, True)
        )


def test_serve_help_names_every_setting() -> None:
    out = run("-m", SERVE, "--help")
    assert out.returncode == 0, out.stderr
    for name in (
        "OFA_VE_MODEL_DIR",
        "OFA_VE_HTTP_PORT",
        "OFA_VE_GRPC_PORT",
        "OFA_VE_METRICS_PORT",
        "OFA_VE_BIND_ADDRESS",
        "RANDOM",
        "--dry-run",
    ):
        assert name in out.stdout, name


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFA_VE_")}
    env.update(values)
    return env


def test_serve_takes_ports_address_and_model_dir_from_the_environment(tmp_path: Path) -> None:
    """OFA_VE_MODEL_DIR becomes the version folder's weights link (a dry run only says
    so); the tritonserver process itself gets no OFA_VE_MODEL_DIR."""
    repository = copy_repository(tmp_path / "repository", {"1": None})
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    env = _env(
        OFA_VE_MODEL_DIR=str(model_dir),
        OFA_VE_HTTP_PORT="18080",
        OFA_VE_GRPC_PORT="18081",
        OFA_VE_METRICS_PORT="18082",
    )
    repo_args = ("--model-repository", str(repository))
    out = serve_dry_run(*repo_args, env=env)
    assert out.returncode == 0, out.stderr
    weights = repository / MODEL_NAME / "1" / "weights"
    assert f"weights: {weights} -> {model_dir.resolve()}" in out.stdout
    assert not weights.exists() and not weights.is_symlink()  # a dry run changes nothing
    assert f"--model-repository={repository.resolve()}" in out.stdout
    for flag in ("--http-port=18080", "--grpc-port=18081", "--metrics-port=18082"):
        assert flag in out.stdout
    assert out.stdout.count("-address=127.0.0.1") == 3

    out = serve_dry_run(*repo_args, env={**env, "OFA_VE_BIND_ADDRESS": "0.0.0.0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("-address=0.0.0.0") == 3


def test_serve_leaves_a_version_folder_with_weights_of_its_own_alone(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Version 1 holds real weights: served as they are, nothing resolved (a missing
    OFA_VE_MODEL_DIR is not even looked at); version 2 without weights gets the link."""
    repository = copy_repository(tmp_path / "repository", {"1": tiny_model_dir, "2": None})
    missing = tmp_path / "nowhere"
    env = _env(OFA_VE_MODEL_DIR=str(missing))
    only_own = copy_repository(tmp_path / "own", {"1": tiny_model_dir})
    out = serve_dry_run("--model-repository", str(only_own), env=env)
    assert out.returncode == 0, out.stderr
    assert "version 1: its own weights" in out.stderr and "weights:" not in out.stdout
    assert "OFA_VE_MODEL_DIR not used" in out.stderr

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    out = serve_dry_run(
        "--model-repository",
        str(repository),
        env=_env(OFA_VE_MODEL_DIR=str(model_dir)),
    )
    assert out.returncode == 0, out.stderr
    assert f"weights: {repository / MODEL_NAME / '2' / 'weights'} -> {model_dir}" in out.stdout
    assert "/1/weights ->" not in out.stdout


def test_serve_links_weights_atomically_and_refuses_what_is_no_repository(tmp_path: Path) -> None:
    from ofa_ve_ops.serve import link_weights, needs_weights

    version = copy_repository(tmp_path / "repository", {"1": None}) / MODEL_NAME / "1"
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert needs_weights(version)
    assert link_weights(version, first).resolve() == first
    assert needs_weights(version)  # a link serve made is serve's to re-point
    assert link_weights(version, second).resolve() == second
    assert sorted(p.name for p in version.iterdir() if "weights" in p.name) == [
        ".weights-link",
        "weights",
    ]
    (version / "weights").unlink()
    (version / "weights").symlink_to(first)
    assert not needs_weights(version)  # a link of the operator's stays
    (version / "weights").unlink()
    (version / "weights").mkdir()
    assert not needs_weights(version)  # a real directory is the operator's

    out = serve_dry_run("--model-repository", str(tmp_path / "a"), env=_env())
    assert out.returncode != 0
    assert f"{tmp_path / 'a'} is not a model repository of {MODEL_NAME}" in out.stderr


def test_serve_refuses_a_missing_model_dir_and_a_bad_port(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    repository = copy_repository(tmp_path / "repository", {"1": None})
    out = serve_dry_run(
        "--model-repository",
        str(repository),
        env=_env(OFA_VE_MODEL_DIR=str(missing)),
    )
    assert out.returncode != 0
    assert str(missing) in out.stderr and "does not exist" in out.stderr
    out = serve_dry_run(env=_env(OFA_VE_MODEL_DIR=str(tmp_path), OFA_VE_GRPC_PORT="x"))
    assert out.returncode != 0 and "OFA_VE_GRPC_PORT" in out.stderr


def test_serve_refuses_a_taken_port_before_loading_anything(tmp_path: Path) -> None:
    """A port in use is found before the model is resolved (a download can take minutes):
    the message names the variable to change; nothing was started, so nothing leaks."""
    import socket

    missing = tmp_path / "not-looked-at"  # resolving it would fail: ports come first
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = str(holder.getsockname()[1])
        out = run("-m", SERVE, env=_env(OFA_VE_MODEL_DIR=str(missing), OFA_VE_HTTP_PORT=taken))
    assert out.returncode != 0
    assert f"127.0.0.1:{taken}" in out.stderr and "already in use" in out.stderr
    assert "OFA_VE_HTTP_PORT=" in out.stderr and "--http-port" in out.stderr
    assert "does not exist" not in out.stderr and "starting tritonserver" not in out.stderr
    same = run(
        "-m",
        SERVE,
        env=_env(OFA_VE_MODEL_DIR=str(missing), OFA_VE_HTTP_PORT="18090", OFA_VE_GRPC_PORT="18090"),
    )
    assert same.returncode != 0 and "OFA_VE_GRPC_PORT and OFA_VE_HTTP_PORT" in same.stderr


def test_serve_names_every_taken_port_in_one_message(tmp_path: Path) -> None:
    """Three endpoints, all three ports taken: one refusal names them all, with a free
    port suggested for each (not one port per attempt)."""
    import socket

    holders = [socket.socket() for _ in range(3)]
    try:
        for holder in holders:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
        ports = [str(h.getsockname()[1]) for h in holders]
        env = _env(
            OFA_VE_MODEL_DIR=str(tmp_path / "not-looked-at"),
            OFA_VE_HTTP_PORT=ports[0],
            OFA_VE_GRPC_PORT=ports[1],
            OFA_VE_METRICS_PORT=ports[2],
        )
        out = run("-m", SERVE, env=env)
    finally:
        for holder in holders:
            holder.close()
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.startswith("serve:")]
    assert len(lines) == 1, out.stderr
    (message,) = lines
    for port, endpoint, variable, flag in zip(
        ports,
        ("HTTP", "gRPC", "metrics"),
        ("OFA_VE_HTTP_PORT", "OFA_VE_GRPC_PORT", "OFA_VE_METRICS_PORT"),
        ("--http-port", "--grpc-port", "--metrics-port"),
        strict=True,
    ):
        assert f"127.0.0.1:{port} (the {endpoint} port, {variable})" in message
        assert f"{variable}=" in message and f"{flag} " in message
    assert "are already in use" in message


def test_serve_closes_the_admin_apis_when_given_a_key(tmp_path: Path) -> None:
    """Open on loopback by default; OFA_VE_ADMIN_KEY closes them as the container does;
    an unusable key is refused before anything starts."""
    from ofa_ve_ops import admin_access

    env = _env(OFA_VE_MODEL_DIR=str(tmp_path))
    assert "restricted" not in serve_dry_run(env=env).stdout
    secret = "f" * 32
    closed = serve_dry_run(env={**env, "OFA_VE_ADMIN_KEY": secret})
    assert closed.returncode == 0, closed.stderr
    for flag in admin_access.restricted_flags(secret):
        assert flag in closed.stdout
    bad = serve_dry_run(env={**env, "OFA_VE_ADMIN_KEY": "short"})
    assert bad.returncode != 0 and "admin key" in bad.stderr
