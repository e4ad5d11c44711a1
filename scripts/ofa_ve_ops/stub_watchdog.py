#!/usr/bin/env python3
"""Run tritonserver, and stop it (exit 70) when one of its Python-backend stubs dies.

Why: each model instance of a Python-backend model is a separate stub process.
When one dies (an OOM kill, a segfault in a native library, a stray `kill -9`),
Triton 2.51 (release 24.10) neither restarts it nor marks the model unready: the
server keeps answering READY on /v2/health/ready and /v2/models/<m>/ready, and
every request to that instance fails with INTERNAL "Stub process '<instance>' is
not healthy." -- a black hole that readiness and liveness probes cannot see. A
SIGTERM then waits out the whole --exit-timeout-secs and leaves the stub's
/dev/shm region behind. (Measured; tests/functional/test_faults.py pins both behaviours.)

This wrapper turns that into an ordinary crash an orchestrator handles: it starts
tritonserver as its child, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to it, and polls
the child's stub processes. When a stub it has seen serving turns into a zombie
(a crash: Triton 2.51 never reaps a dead stub, while a stub it ends itself on an
unload or shutdown is reaped and simply vanishes) and no stop was asked for, it
logs why, sends SIGTERM (readiness drops at once), SIGKILLs whatever is left
after --stop-timeout seconds, removes the dead stubs' /dev/shm regions, and exits
70 (EX_SOFTWARE). Otherwise it exits with tritonserver's own status (128+N for a
signal).

Signals reach tritonserver through the watchdog only, and a stop (SIGTERM or
SIGINT) only once. Triton 2.51's handler locks the mutex its main thread waits
under; a second stop signal that lands on the main thread just after the first woke
it deadlocks the server for good ("Signal (2) received." twice, then nothing: seen
once in a fresh-clone CI run, with Ctrl-C to the process group plus the copy this
wrapper forwarded). So the child runs in a process group of its own (a terminal's
Ctrl-C, `kill -- -PGID`, reach only this process), later stop signals are logged and
dropped (Triton ignores them anyway), and the kernel SIGTERMs the child should this
process die without stopping it (PR_SET_PDEATHSIG).

    python -m ofa_ve_ops.stub_watchdog -- tritonserver --model-repository=... [flags]
    python -m ofa_ve_ops.stub_watchdog --poll-interval 0.5 -- "$(which tritonserver)" ...

Linux only (reads /proc), like tritonserver itself.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ofa_ve_ops.cli_args import command_after_separator
from ofa_ve_ops.paths import SHM_REGION_PREFIX, STUB_NAME
from ofa_ve_ops.procfs import children, cmdline, process_state

EXIT_STUB_DIED = 70
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # Triton's handler: forward one, once
PR_SET_PDEATHSIG = 1


def _say(message: str) -> None:
    print(f"stub_watchdog: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Stub:
    pid: int
    instance: str
    shm_region: str | None


def _signal_name(signum: int) -> str:
    """SIGABRT for 6; the bare number for a signal Python has no name for (real-time)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def serving_stubs(server_pid: int) -> dict[int, Stub]:
    """Live model-instance stubs of `server_pid`.

    Stub argv (python_backend 24.10): stub, model.py, shm region, default size,
    growth size, parent pid, backend dir, IPC handle, instance name, runtime dir. A
    freshly forked child still shows tritonserver's argv and is skipped until it has
    exec'd; the auto-complete stub carries no instance name and is skipped too.
    """
    stubs = {}
    for pid in children(server_pid):
        argv = cmdline(pid)
        if not argv or not argv[0].endswith(STUB_NAME) or process_state(pid) in (None, "Z", "X"):
            continue
        region = next((a for a in argv if a.startswith(SHM_REGION_PREFIX)), None)
        instance = argv[8] if len(argv) >= 10 else ""
        if instance:
            stubs[pid] = Stub(pid, instance, region)
    return stubs


def remove_regions(stubs: Sequence[Stub]) -> list[str]:
    """Delete the /dev/shm regions of dead stubs (Triton leaves them behind)."""
    removed = []
    for stub in stubs:
        if stub.shm_region:
            path = Path("/dev/shm") / stub.shm_region
            try:
                path.unlink()
                removed.append(stub.shm_region)
            except FileNotFoundError:
                continue
    return removed


def _child_setup(parent: int) -> Callable[[], None]:
    """What the child does between fork and exec: its own process group, so that only
    this process receives group-wide signals, and a SIGTERM from the kernel when this
    process dies (no orphaned server holding the ports)."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork

    def setup() -> None:
        os.setpgid(0, 0)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0 or os.getppid() != parent:
            os._exit(126)  # no safe way to run it (the watchdog already died)

    return setup


class Watchdog:
    """tritonserver as a child process, watched for dead stubs."""

    def __init__(self, command: Sequence[str], poll_interval_s: float, stop_timeout_s: float):
        self.command = list(command)
        self.poll_interval_s = poll_interval_s
        self.stop_timeout_s = stop_timeout_s
        self.stopping = False
        self.stop_forwarded = False
        self.pending: int | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def _forward(self, signum: int, _frame: object) -> None:
        if signum in STOP_SIGNALS and self.stop_forwarded:
            _say(f"{_signal_name(signum)} again: already stopping, not forwarded")
            return
        self.stopping = True  # stubs exit during a requested stop: not a failure
        if self.child is None:  # not started yet: run() forwards it once it is
            self.pending = signum
        elif self.child.poll() is None:
            self.child.send_signal(signum)
            self.stop_forwarded = self.stop_forwarded or signum in STOP_SIGNALS

    def run(self) -> int:
        for signum in FORWARDED:
            signal.signal(signum, self._forward)
        try:
            # A preexec_fn makes CPython fork() rather than vfork(); harmless here,
            # where no other thread runs.
            self.child = subprocess.Popen(self.command, preexec_fn=_child_setup(os.getpid()))
        except OSError as e:
            _say(f"cannot start {self.command[0]}: {e}")
            return 127
        if self.pending is not None:
            self._forward(self.pending, None)
        seen: dict[int, Stub] = {}
        ever: dict[int, Stub] = {}  # every stub of this server, for its /dev/shm region
        while True:
            code = self.child.poll()
            if code is not None:
                # The server is gone, so no region it made can be used again. A clean
                # shutdown removes them itself; a failed start (a port taken after the
                # model loaded) leaves one per instance behind: remove what is left.
                status = code if code >= 0 else 128 - code
                if not self.stopping:
                    how = f"signal {_signal_name(-code)}" if code < 0 else f"status {code}"
                    _say(
                        f"tritonserver (pid {self.child.pid}) ended by itself ({how}); "
                        f"exit {status}."
                    )
                removed = remove_regions(list(ever.values()))
                if removed:
                    _say(f"removed leftover shared memory: {', '.join(removed)}")
                return status
            current = serving_stubs(self.child.pid)
            ever.update(current)
            # A crashed stub stays a zombie (2.51 never reaps it); one that Triton ends
            # itself (unload in explicit mode, shutdown) is reaped and simply vanishes.
            dead = [s for s in seen.values() if process_state(s.pid) == "Z"]
            if dead and not self.stopping:
                return self._stub_died(dead, list(current.values()))
            seen = {pid: s for pid, s in seen.items() if process_state(pid) is not None}
            seen.update(current)
            time.sleep(self.poll_interval_s)

    def _stub_died(self, dead: list[Stub], alive: list[Stub]) -> int:
        assert self.child is not None
        for stub in dead:
            _say(
                f"the Python-backend stub of model instance {stub.instance!r} (pid {stub.pid}) "
                "died unexpectedly (an unreaped zombie). Triton 2.51 would keep "
                "reporting READY and fail every request to it, so tritonserver "
                f"(pid {self.child.pid}) is being stopped; restart it (exit {EXIT_STUB_DIED})."
            )
        self.stopping = self.stop_forwarded = True
        self.child.send_signal(signal.SIGTERM)  # readiness drops at once
        try:
            self.child.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            # With a dead instance Triton waits out its whole exit timeout: cut it short.
            _say(f"tritonserver still running after {self.stop_timeout_s:.0f} s: SIGKILL")
            for stub in alive:
                if process_state(stub.pid) not in (None, "Z", "X"):
                    os.kill(stub.pid, signal.SIGKILL)
            self.child.kill()
            self.child.wait()
        removed = remove_regions(dead + alive)
        if removed:
            _say(f"removed leftover shared memory: {', '.join(removed)}")
        return EXIT_STUB_DIED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Everything after `--` is the tritonserver command line.",
    )
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL once a stub died (default 5)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver ARGS...")
    args = parser.parse_args(argv)
    command = command_after_separator(parser, args.command, "the tritonserver command")
    if args.poll_interval <= 0 or args.stop_timeout < 0:
        parser.error("--poll-interval must be positive and --stop-timeout not negative")
    return Watchdog(command, args.poll_interval, args.stop_timeout).run()


if __name__ == "__main__":
    sys.exit(main())
