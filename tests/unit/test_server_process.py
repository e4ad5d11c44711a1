"""scripts/ofa_ve_ops/server_process.py's clean-up by PID, without starting a server.

Why: the harness kills a server's process group and tree by its PID, also long after the
server exited (the session's teardown kills every server it built). PIDs wrap at
pid_max (32768 on these machines), and the suite starts thousands of processes and
threads across its workers, so by then the number can belong to another worker's
process. Killing it took down an unrelated test's child; the harness must leave a
reused number alone and still clean up the group while the number is its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ofa_ve_ops.procfs import children, process_group, process_state
from ofa_ve_ops.server_process import TritonServer
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """Someone else's process: the leader of a process group of its own, with a child."""
    process = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess; subprocess.run({SLEEPER!r})"],
        start_new_session=True,
    )
    yield process
    for pid in [process.pid, *children(process.pid)]:
        if process_state(pid) not in (None, "Z"):
            os.kill(pid, signal.SIGKILL)
    process.wait(10)


def _server_whose_process_was(pid: int, tmp_path: Path) -> TritonServer:
    """A server object whose process has exited and been reaped, and whose number is
    now ``pid`` (what PID reuse makes of it)."""
    server = TritonServer(tmp_path / "repository", log_dir=tmp_path / "log")
    finished = subprocess.Popen(["true"])
    finished.wait(10)
    finished.pid = pid  # the number the reaped process had, now taken
    server._process = finished
    return server


def test_a_reused_pid_is_left_alone(stranger: subprocess.Popen[bytes], tmp_path: Path) -> None:
    wait_for(lambda: len(children(stranger.pid)) == 1, "the stranger's child", 30)
    (child,) = children(stranger.pid)
    server = _server_whose_process_was(stranger.pid, tmp_path)
    server.kill()
    server.stop()
    assert process_state(stranger.pid) not in (None, "Z")
    assert process_state(child) not in (None, "Z")


def test_a_group_left_by_a_reaped_server_is_still_killed(tmp_path: Path) -> None:
    """The number is free (the server's process is gone) but its group lives on in a
    process it started: the group is still this server's, so it is killed."""
    leader = subprocess.Popen(
        [sys.executable, "-c",
         f"import subprocess; subprocess.Popen({SLEEPER!r}); print(flush=True)"],
        start_new_session=True, stdout=subprocess.PIPE,
    )
    leader.stdout.readline()  # its child started, in the leader's group
    (orphan,) = [pid for pid in process_group(leader.pid) if pid != leader.pid]
    leader.wait(10)  # the leader exits and is reaped; its child keeps the group alive
    server = TritonServer(tmp_path / "repository", log_dir=tmp_path / "log")
    server._process = leader
    try:
        server.kill()
        wait_for(lambda: process_state(orphan) in (None, "Z"), "the group's last process", 30)
    finally:
        if process_state(orphan) not in (None, "Z"):
            os.kill(orphan, signal.SIGKILL)
