"""scripts/ofa_ve_ops/stub_watchdog.py's signal handling, over a small Python child.

What tritonserver needs from its wrapper: exactly one stop signal (a second one can
deadlock Triton 2.51, see the module's docstring), group-wide signals reaching only
the wrapper, other signals passed on, and no orphaned child when the wrapper itself
is killed. The child here records every signal it receives in a file, so the test
reads what happened instead of timing it; the dead-stub path runs against a real
tritonserver in test_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ofa_ve_ops.procfs import children, process_state
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

# Writes "ready PGID" once its handlers are in place, then one line per signal it
# gets; exits 0 on SIGUSR1 (the test's "done"), 3 on SIGTERM.
CHILD = r"""
import os, signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def record(signum, frame):
    log.write(f"{signal.Signals(signum).name}\n")
    if signum in (signal.SIGTERM, signal.SIGUSR1):
        sys.exit(3 if signum == signal.SIGTERM else 0)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(s, record)
log.write(f"ready {os.getpgrp()}\n")
while True:
    time.sleep(0.02)
"""


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    log, said = tmp_path / "child.log", tmp_path / "watchdog.log"
    log.touch()
    with open(said, "wb") as stderr:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "ofa_ve_ops.stub_watchdog", "--poll-interval", "0.1",
             "--", sys.executable, "-c", CHILD, str(log)],
            stderr=stderr,
            start_new_session=True,  # a process group of its own, as a terminal gives
        )  # fmt: skip
    wait_for(lambda: log.read_text().startswith("ready"), "the child's handlers", 60)
    return watchdog, log, said


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _cleanup(watchdog: subprocess.Popen[bytes], child: int | None) -> None:
    for pid in (watchdog.pid, child):
        if pid is not None and process_state(pid) not in (None, "Z"):
            os.kill(pid, signal.SIGKILL)
    watchdog.wait(10)


def test_one_stop_signal_reaches_the_child_and_group_signals_only_the_watchdog(
    tmp_path: Path,
) -> None:
    watchdog, log, said = _start(tmp_path)
    child = None
    try:
        (child,) = children(watchdog.pid)
        assert int(_lines(log)[0].split()[1]) == child  # a process group of its own
        os.killpg(watchdog.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the group
        wait_for(lambda: "SIGINT" in _lines(log), "the forwarded SIGINT", 30)
        os.killpg(watchdog.pid, signal.SIGINT)  # a second Ctrl-C
        os.kill(watchdog.pid, signal.SIGTERM)  # and an orchestrator's stop
        wait_for(
            lambda: said.read_text().count("already stopping, not forwarded") == 2,
            "the watchdog dropping both repeated stops",
            30,
        )
        os.kill(watchdog.pid, signal.SIGHUP)  # not a stop Triton handles: passed on
        wait_for(lambda: "SIGHUP" in _lines(log), "the forwarded SIGHUP", 30)
        os.kill(child, signal.SIGUSR1)
        assert watchdog.wait(30) == 0  # the child's own exit status
        assert _lines(log)[1:] == ["SIGINT", "SIGHUP", "SIGUSR1"]
    finally:
        _cleanup(watchdog, child)


def test_a_killed_watchdog_leaves_no_orphan(tmp_path: Path) -> None:
    watchdog, log, _ = _start(tmp_path)
    child = None
    try:
        (child,) = children(watchdog.pid)
        os.kill(watchdog.pid, signal.SIGKILL)
        watchdog.wait(10)
        # The kernel sends the child SIGTERM (PR_SET_PDEATHSIG): Triton drains and exits.
        wait_for(lambda: process_state(child) in (None, "Z"), "the orphaned child's exit", 30)
        assert _lines(log)[1:] == ["SIGTERM"]
    finally:
        _cleanup(watchdog, child)


def test_a_child_that_dies_by_itself_passes_its_status_on_and_says_so(tmp_path: Path) -> None:
    """No stop asked for, and the child dies (as tritonserver can abort when a stub
    dies under load): the watchdog exits with its status, 128+N for a signal, and its
    log says that tritonserver ended by itself."""
    watchdog, _, said = _start(tmp_path)
    child = None
    try:
        (child,) = children(watchdog.pid)
        os.kill(child, signal.SIGABRT)
        assert watchdog.wait(30) == 128 + signal.SIGABRT
        assert f"(pid {child}) ended by itself (signal SIGABRT); exit 134" in said.read_text()
    finally:
        _cleanup(watchdog, child)
