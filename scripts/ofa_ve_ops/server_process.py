"""A real tritonserver process for tests: free loopback ports, its own log, cleanup by PID.

Why a class of our own: every server test needs the same things done carefully:
ports nobody else holds, readiness polled with a deadline (failing fast, with the
log, when the process dies), shutdown that escalates from SIGTERM to SIGKILL, and
no orphaned Python-backend stubs even when a test fails or pytest is interrupted.

    with TritonServer(MODEL_REPOSITORY, model_dir) as server:   # starts, waits READY
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

The server runs in its own process group (tritonserver plus its stub processes), so
`kill()` and the final cleanup reach the stubs too. A restarted server (`stop()` or
`kill()`, then `start()`) comes back on the same ports.

How it is started, and why not with `preexec_fn`: a server must die with the process
that started it (PR_SET_PDEATHSIG), but setting that in a `preexec_fn` forces CPython's
_posixsubprocess to really fork(): it uses vfork() only when there is no preexec_fn
(and no user/group change), and only with a preexec_fn does it run the fork handlers
(PyOS_BeforeFork, and glibc's pthread_atfork ones with fork()). grpcio's fork handler
waits for the gRPC calls in flight, so a test restarting a server while its worker
threads retry calls against that very server hung for good in fork(). Instead the
child is a tiny launcher (`launcher_command`: `python -I -S -c ...`) that sets
PR_SET_PDEATHSIG itself, exits if its parent already died (getppid), and execs
tritonserver under the same PID. Checked with
`strace -f -e trace=clone,clone3,vfork,fork,execve,prctl`: the test process calls
vfork(), the child execs the launcher, which calls prctl(PR_SET_PDEATHSIG, SIGTERM)
and execs the command; no fork() or clone() without CLONE_VM in the test process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ofa_ve_ops import triton_runtime
from ofa_ve_ops.paths import MODEL_REPOSITORY, SHM_REGION_PREFIX
from ofa_ve_ops.procfs import cmdline, descendants, process_state

MODEL_DIR_ENV = "OFA_VE_MODEL_DIR"

DEFAULT_READY_TIMEOUT_S = 240.0
STOP_GRACE_S = 20.0

_live: dict[int, TritonServer] = {}
_live_lock = threading.Lock()

STARTS: list[str] = []
"""repr() of the server at each process start in this process (a restart counts)."""

READY_TIMES: list[tuple[str, float]] = []
"""(server, seconds from start() to READY) for every start-up in this process: the
suite's summary prints them, so the cost of each extra server stays visible."""


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago (bound, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# The launcher tritonserver is started through: it asks the kernel to SIGTERM it when
# its parent dies (PR_SET_PDEATHSIG, kept across execve), checks that the parent has
# not died already (getppid() is no longer the test process: the signal would never
# come), then execs the real command line. Run as `python -I -S -c LAUNCHER PPID ARGV...`.
_LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    # 1: PR_SET_PDEATHSIG
    "if ctypes.CDLL(None).prctl(1,signal.SIGTERM):sys.exit('launcher: prctl failed')\n"
    "if os.getppid()!=int(sys.argv[1]):sys.exit('launcher: parent already gone')\n"
    "os.execvp(sys.argv[2],sys.argv[2:])"
)


def launcher_command(command: Sequence[str]) -> list[str]:
    """`command`, run through the die-with-this-process launcher (Linux)."""
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *command]


class ServerStartError(RuntimeError):
    """tritonserver exited or did not become ready in time; the message ends with its log."""


class TritonServer:
    """One tritonserver on 127.0.0.1 serving `model_repository` with the weights in `model_dir`.

    `model_dir` reaches the model as `OFA_VE_MODEL_DIR`, overriding the version
    folders' own weights (tests pass the session's demo checkpoint, see the
    `server_factory` fixture of tests/functional/conftest.py). `model_dir=None` means the
    caller's `OFA_VE_MODEL_DIR` where it is set, else no override: every version
    loads its own `<version>/weights/`, as a deployed repository does.
    `extra_args` are appended to the command line (e.g. TLS flags), `env` is added to
    the server's environment, ports are free ones unless given.
    """

    def __init__(
        self,
        model_repository: Path | str = MODEL_REPOSITORY,
        model_dir: Path | str | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        model_control_mode: str | None = None,
        load_models: Iterable[str] = (),
        exit_timeout_s: int = triton_runtime.DEFAULT_EXIT_TIMEOUT_S,
        log_verbose: int = 0,
        log_dir: Path | str | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        chosen = model_dir or os.environ.get(MODEL_DIR_ENV, "").strip()
        self.model_dir = Path(chosen).resolve() if chosen else None
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models)
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        given = (http_port, grpc_port, metrics_port)
        # Ports the caller fixed, or that a client has seen, must survive a restart.
        self._ports_pinned = all(p is not None for p in given)
        picked = iter(free_ports(3))
        self.http_port, self.grpc_port, self.metrics_port = (p or next(picked) for p in given)
        self._log_dir = Path(log_dir or tempfile.mkdtemp(prefix="tritonserver-"))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._log_dir / "tritonserver.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._shm_regions: set[str] = set()
        self._log_file = None
        self.started_at: float | None = None
        self.ready_after_s: float | None = None
        self.starts = 0
        """How many times `start()` launched a process (a port-race retry counts)."""

    # ----------------------------------------------------------------- addresses
    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # ----------------------------------------------------------------- lifecycle
    def command(self) -> list[str]:
        runtime = triton_runtime.prepare_runtime()
        return triton_runtime.server_command(
            runtime,
            self.model_repository,
            ports=triton_runtime.Ports(self.http_port, self.grpc_port, self.metrics_port),
            exit_timeout_s=self.exit_timeout_s,
            model_control_mode=self.model_control_mode,
            load_models=self.load_models,
            log_verbose=self.log_verbose,
            extra_args=self.extra_args,
        )

    def environment(self) -> dict[str, str]:
        runtime = triton_runtime.prepare_runtime()
        env = triton_runtime.server_env(runtime)
        env.pop(MODEL_DIR_ENV, None)  # only an override given here reaches the model
        if self.model_dir is not None:
            env[MODEL_DIR_ENV] = str(self.model_dir)
        env.update(self.extra_env)
        return env

    def start(self) -> TritonServer:
        """Start the process (returns at once; `wait_ready()` waits for READY)."""
        if self.is_running():
            raise RuntimeError(f"tritonserver {self.pid} is already running")
        command, env = self.command(), self.environment()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115  (closed in _reap)
        self._log_file.write(f"==== starting: {' '.join(command)}\n".encode())
        self._log_file.flush()
        # PR_SET_PDEATHSIG fires when the *thread* that started the child exits, so
        # the launcher only from the main thread (whose end is the test process's end).
        if threading.current_thread() is threading.main_thread():
            command = launcher_command(command)
        # No preexec_fn (see the module docstring): CPython then starts the child with
        # vfork() and runs no fork handlers, gRPC's included.
        self._process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: the stubs go with it
        )
        self.starts += 1
        STARTS.append(repr(self))
        self.started_at = time.monotonic()
        self.ready_after_s = None
        with _live_lock:
            _live[self._process.pid] = self
        return self

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal)."""
        return None if self._process is None else self._process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit on its own; its exit status.

        Raises subprocess.TimeoutExpired after `timeout` s (it is left running)."""
        if self._process is None:
            raise RuntimeError("start() the server first")
        return self._process.wait(timeout)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_ready(self) -> bool:
        """HTTP /v2/health/ready: 200 only once every model is loaded (strict readiness)."""
        try:
            url = f"http://{self.http_url}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT_S) -> TritonServer:
        """Block until READY; raise ServerStartError (with the log) if it dies or times out.

        If the very first start lost a port race (another process took a port between
        our check and tritonserver's bind), it is retried once on fresh ports.
        """
        if self._process is None:
            raise RuntimeError("start() the server first")
        deadline = time.monotonic() + timeout
        retried = False
        while True:
            if self.is_ready():
                self._shm_regions.update(self._stub_shm_regions())
                if self.ready_after_s is None:  # the first READY of this start: record it
                    self.ready_after_s = time.monotonic() - (self.started_at or 0.0)
                    READY_TIMES.append((repr(self), self.ready_after_s))
                self._ports_pinned = True
                return self
            if not self.is_running():
                code = self._process.returncode
                self._reap()
                if not retried and not self._ports_pinned and self._lost_port_race():
                    retried = True
                    self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
                    self.start()
                    continue
                raise ServerStartError(
                    f"tritonserver exited with {code} before READY; log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"tritonserver not READY after {timeout:.0f} s; log:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _owns_pid(self) -> bool:
        """Whether the server's process number still names its process, or its leftover
        group. Once Popen has reaped the process the number is free, and a live process
        with it is someone else's (PIDs wrap at pid_max, and fast where tests start many
        processes): its group, children and stubs must not be touched. While a group
        lives, the kernel does not hand out its number, so leftover stubs stay ours."""
        if self._process is None:
            return False
        return self._process.returncode is None or process_state(self._process.pid) is None

    def _stub_shm_regions(self) -> set[str]:
        """The /dev/shm regions of this server's Python-backend stubs (named on their
        command lines), so that they can be removed after a SIGKILL, which leaves them."""
        if not self._owns_pid():
            return set()
        tree = [self._process.pid, *descendants(self._process.pid)]
        return {a for pid in tree for a in cmdline(pid) if a.startswith(SHM_REGION_PREFIX)}

    def _lost_port_race(self) -> bool:
        text = self.log_text()[-4000:].lower()
        return "already in use" in text or "failed to bind" in text

    def stop(self, timeout: float = STOP_GRACE_S) -> int | None:
        """SIGTERM (Triton drains and unloads), then SIGKILL after `timeout` s. Exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self._process.wait(10)
        code = self._process.returncode
        self._kill_group()  # any stub still alive
        self._reap()
        return code

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once: a crash, no drain."""
        if self._process is None:
            return None
        self._kill_group()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(10)
        code = self._process.returncode
        self._reap()
        return code

    def _kill_group(self) -> None:
        """SIGKILL the process group and every process below it (under the stub
        watchdog, tritonserver and its stubs are in a group of their own); nothing once
        the process number is someone else's (``_owns_pid``)."""
        if self._owns_pid():
            # The stubs alive now: a model reloaded since READY has a region of its own.
            self._shm_regions.update(self._stub_shm_regions())
            tree = descendants(self._process.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _reap(self) -> None:
        if self._process is not None:
            with _live_lock:
                _live.pop(self._process.pid, None)
            if self._process.poll() is not None:  # the group is gone: nobody maps them
                for region in self._shm_regions:
                    Path("/dev/shm", region).unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ----------------------------------------------------------------- logs
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ----------------------------------------------------------------- context
    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TritonServer(pid={self.pid}, grpc={self.grpc_url}, http={self.http_url})"


def stop_all() -> None:
    """Stop every server this process started and has not stopped (by PID)."""
    with _live_lock:
        servers = list(_live.values())
    for server in servers:
        server.stop(timeout=5)


atexit.register(stop_all)
