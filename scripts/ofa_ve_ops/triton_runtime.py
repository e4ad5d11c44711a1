#!/usr/bin/env python3
"""A real tritonserver (Triton 2.51, release 24.10) laid out from the `nvidia-pytriton` wheel.

Why: the wheel carries the complete server, Python backend and one backend stub per
Python version, but not in a shape tritonserver can run from where pip put it. This
module does what PyTriton itself does to run it:

1. copy `bin/`, `backends/` and `caches/` into a work directory (default
   `.cache/triton/<python>-<pytriton>/`) and the stub for *this* Python into
   `backends/python/`;
2. put `nvidia_pytriton.libs` on `LD_LIBRARY_PATH` (the copied binary loses its
   relative library path), plus a `lib/` folder holding a symlink to this
   interpreter's `libpython3.X.so.1.0` (the stub embeds CPython and must not pick up
   another patch release) and the `libb64.so.0d` / `libcudart.so.12` names that
   `perf_analyzer` asks for;
3. put this interpreter's `bin/` first on `PATH`, so the stub imports this
   environment's packages (numpy < 2, torch, the engine's dependencies).

Importable: `prepare_runtime()`, `server_command(...)`, `server_env(...)`. CLI:

    python -m ofa_ve_ops.triton_runtime prepare            # lay out, print the work dir
    python -m ofa_ve_ops.triton_runtime env                # `export` lines for a shell
    python -m ofa_ve_ops.triton_runtime exec -- perf_analyzer -m ofa_visual_entailment ...
    python -m ofa_ve_ops.triton_runtime command --model-repository model_repository
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ofa_ve_ops.cli_args import command_after_separator
from ofa_ve_ops.paths import CACHE_DIR, MODEL_REPOSITORY, STUB_NAME

DEFAULT_WORK_ROOT = CACHE_DIR / "triton"
WORK_DIR_ENV = "OFA_VE_TRITON_DIR"

# Python backend shared memory (one region per model instance, in /dev/shm). The
# backend's own default is 1 MiB, grown 1 MiB at a time; a batch of 32 encoded images
# easily needs tens of MiB, so start larger and grow in bigger steps. Pages of a
# tmpfs region only count once touched.
DEFAULT_SHM_DEFAULT_BYTES = 16 * 1024 * 1024
DEFAULT_SHM_GROWTH_BYTES = 16 * 1024 * 1024
DEFAULT_EXIT_TIMEOUT_S = 10


class RuntimeSetupError(RuntimeError):
    """The tritonserver runtime cannot be laid out; the message says what to install."""


@dataclass(frozen=True)
class TritonRuntime:
    """Paths of a laid-out tritonserver and the environment it needs."""

    root: Path
    wheel_libs: Path
    python_bin_dir: Path

    @property
    def server(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backend_dir(self) -> Path:
        return self.root / "backends"

    @property
    def cache_dir(self) -> Path:
        return self.root / "caches"

    @property
    def lib_dir(self) -> Path:
        return self.root / "lib"

    @property
    def stub(self) -> Path:
        return self.backend_dir / "python" / STUB_NAME


@dataclass(frozen=True)
class GrpcTls:
    """TLS for the gRPC endpoint: server cert/key, and a root cert for mutual TLS."""

    server_cert: Path
    server_key: Path
    root_cert: Path | None = None
    mutual: bool = False


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeSetupError(
            "nvidia-pytriton is not installed in this Python "
            f"({sys.executable}); run `scripts/setup.sh --profile serve`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_libpython() -> Path:
    """The shared libpython of the running interpreter (the stub links against it)."""
    soname = f"libpython{_python_tag()}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    candidates = [
        Path(libdir) / soname,
        Path(libdir) / multiarch / soname,
        Path("/usr/lib") / multiarch / soname,
        Path("/usr/local/lib") / soname,
        Path(sys.base_prefix) / "lib" / soname,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise RuntimeSetupError(
        f"{soname} not found (looked in {', '.join(str(c.parent) for c in candidates)}). "
        "The Triton Python-backend stub embeds CPython and needs the shared library: "
        f"on Debian/Ubuntu `apt-get install libpython{_python_tag()}`; with pyenv "
        "build Python with PYTHON_CONFIGURE_OPTS=--enable-shared."
    )


def _default_work_dir(pytriton_version: str) -> Path:
    override = os.environ.get(WORK_DIR_ENV)
    if override:
        return Path(override)
    return DEFAULT_WORK_ROOT / f"py{_python_tag()}-pytriton{pytriton_version}"


def _wanted_stamp(pytriton_dir: Path, version: str, libpython: Path) -> dict[str, str]:
    return {
        "pytriton_dir": str(pytriton_dir),
        "pytriton_version": version,
        "python": _python_tag(),
        "libpython": str(libpython),
    }


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _one_match(pattern: str) -> Path:
    matches = sorted(glob.glob(pattern))
    if not matches:
        raise RuntimeSetupError(f"expected a library matching {pattern}; reinstall nvidia-pytriton")
    return Path(matches[0])


def _lay_out(dest: Path, pytriton_dir: Path, wheel_libs: Path, libpython: Path) -> None:
    source = pytriton_dir / "tritonserver"
    stub = source / "python_backend_stubs" / _python_tag() / STUB_NAME
    if not stub.is_file():
        raise RuntimeSetupError(
            f"nvidia-pytriton has no Python-backend stub for Python {_python_tag()} ({stub})"
        )
    for part in ("bin", "backends", "caches"):
        shutil.copytree(source / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, dest / "backends" / "python" / STUB_NAME)
    lib = dest / "lib"
    lib.mkdir()
    _link(lib / libpython.name, libpython)
    _link(lib / "libb64.so.0d", _one_match(str(wheel_libs / "libb64-*.so.0d")))
    _link(lib / "libcudart.so.12", _one_match(str(wheel_libs / "libcudart-*.so.12*")))


def prepare_runtime(work_dir: Path | None = None) -> TritonRuntime:
    """Lay out tritonserver for the running Python (idempotent, safe to run concurrently).

    A stamp file records what the layout was made from; a stale or partial layout is
    rebuilt in a temporary folder and moved into place, so two processes starting at
    once never see half a copy.
    """
    pytriton_dir = _pytriton_dir()
    wheel_libs = pytriton_dir.parent / "nvidia_pytriton.libs"
    if not wheel_libs.is_dir():
        raise RuntimeSetupError(f"{wheel_libs} is missing; reinstall nvidia-pytriton")
    version = importlib.metadata.version("nvidia-pytriton")
    libpython = find_libpython()
    root = Path(work_dir) if work_dir is not None else _default_work_dir(version)
    runtime = TritonRuntime(
        root=root.resolve(),
        wheel_libs=wheel_libs,
        python_bin_dir=Path(sys.executable).parent,
    )
    wanted = _wanted_stamp(pytriton_dir, version, libpython)

    def layout_ok() -> bool:
        stamp = root / ".layout.json"
        try:
            return json.loads(stamp.read_text()) == wanted and runtime.stub.is_file()
        except (OSError, ValueError):
            return False

    if layout_ok():
        return runtime
    root.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread: concurrent preparers never share a staging folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    stale = staging.with_name(staging.name.replace(".tmp-", ".stale-"))
    try:
        _lay_out(staging, pytriton_dir, wheel_libs, libpython)
        (staging / ".layout.json").write_text(json.dumps(wanted, indent=2) + "\n")
        if layout_ok():  # another process finished first while we copied
            return runtime
        if root.exists():
            root.rename(stale)
        try:
            staging.rename(root)
        except OSError:
            if not layout_ok():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
    return runtime


def has_gpu() -> bool:
    """Whether tritonserver will see an NVIDIA GPU (cheap: no CUDA initialisation)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def _prepend(path_list: str | None, *entries: Path) -> str:
    parts = [str(e) for e in entries]
    if path_list:
        parts.extend(p for p in path_list.split(os.pathsep) if p and p not in parts)
    return os.pathsep.join(parts)


def server_env(
    runtime: TritonRuntime, base: Mapping[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """Environment for tritonserver and perf_analyzer: libraries and this Python first."""
    env = dict(os.environ if base is None else base)
    env["LD_LIBRARY_PATH"] = _prepend(
        env.get("LD_LIBRARY_PATH"), runtime.lib_dir, runtime.wheel_libs
    )
    env["PATH"] = _prepend(env.get("PATH"), runtime.python_bin_dir)
    env.update(extra)
    return env


class Ports(NamedTuple):
    """tritonserver's three endpoints' ports (its defaults)."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


DEFAULT_PORTS = Ports()


def server_command(
    runtime: TritonRuntime,
    model_repository: Path,
    *,
    ports: Ports = DEFAULT_PORTS,
    address: str = "127.0.0.1",
    gpu: bool | None = None,
    exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S,
    shm_default_bytes: int = DEFAULT_SHM_DEFAULT_BYTES,
    shm_growth_bytes: int = DEFAULT_SHM_GROWTH_BYTES,
    grpc_tls: GrpcTls | None = None,
    model_control_mode: str | None = None,
    load_models: Iterable[str] = (),
    log_verbose: int = 0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The tritonserver command line for `model_repository`.

    Strict readiness (ready only when every model is loaded and warmed up), no
    auto-complete (the config is complete as committed, and it saves a throwaway stub
    start), all endpoints on `address` (loopback unless asked otherwise).
    """
    gpu = has_gpu() if gpu is None else gpu
    cmd = [
        str(runtime.server),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={runtime.backend_dir}",
        f"--cache-directory={runtime.cache_dir}",
        f"--http-address={address}",
        f"--http-port={ports.http}",
        f"--grpc-address={address}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-address={address}",
        f"--metrics-port={ports.metrics}",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        f"--exit-timeout-secs={exit_timeout_s}",
        f"--backend-config=python,shm-default-byte-size={shm_default_bytes}",
        f"--backend-config=python,shm-growth-byte-size={shm_growth_bytes}",
    ]
    if not gpu:
        # Without a GPU there is nothing to pin for (this also silences a CUDA warning),
        # and no GPU to report on: GPU metrics would log "Failed to initialize NVML"
        # and "DCGM unable to start" on every start. (One line stays: tritonserver
        # logs "CudaDriverHelper has not been initialized." whenever there is no CUDA
        # driver; it is harmless, and serve.py says so.)
        cmd += ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]
    if model_control_mode:
        cmd.append(f"--model-control-mode={model_control_mode}")
    cmd.extend(f"--load-model={name}" for name in load_models)
    if log_verbose:
        cmd.append(f"--log-verbose={log_verbose}")
    if grpc_tls is not None:
        cmd += [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={grpc_tls.server_cert}",
            f"--grpc-server-key={grpc_tls.server_key}",
        ]
        if grpc_tls.root_cert is not None:
            cmd.append(f"--grpc-root-cert={grpc_tls.root_cert}")
        if grpc_tls.mutual:
            if grpc_tls.root_cert is None:
                raise ValueError("mutual TLS needs a root certificate to verify clients")
            cmd.append("--grpc-use-ssl-mutual=true")
    cmd.extend(extra_args)
    return cmd


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Lay out a real tritonserver from the nvidia-pytriton wheel and run "
        "tritonserver or perf_analyzer with the environment they need."
    )
    parser.add_argument("--work-dir", type=Path, help=f"layout folder (env {WORK_DIR_ENV})")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="lay out the runtime and print its folder")
    sub.add_parser("env", help='print `export` lines: eval "$(... env)"')
    run = sub.add_parser("exec", help="run a command (e.g. perf_analyzer) with the runtime env")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="command after `--`")
    show = sub.add_parser("command", help="print the tritonserver command line")
    show.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    args = parser.parse_args(argv)

    try:
        runtime = prepare_runtime(args.work_dir)
    except RuntimeSetupError as exc:
        print(f"triton_runtime: {exc}", file=sys.stderr)
        return 1
    if args.action == "prepare":
        print(runtime.root)
    elif args.action == "env":
        env = server_env(runtime)
        for key in ("LD_LIBRARY_PATH", "PATH"):
            print(f"export {key}={_shell_quote(env[key])}")
    elif args.action == "command":
        print(" ".join(_shell_quote(c) for c in server_command(runtime, args.model_repository)))
    else:
        cmd = command_after_separator(parser, args.cmd, "the command for exec (e.g. perf_analyzer)")
        env = server_env(runtime)
        exe = shutil.which(cmd[0], path=env["PATH"]) or cmd[0]
        os.execvpe(exe, cmd, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
