"""Reading processes from Linux's /proc: what the soak, the tests and the stub watchdog share.

Why /proc and not psutil: these are four small reads, and the watchdog runs in
NVIDIA's container with nothing but the standard library.
"""

from __future__ import annotations

import os


def vm_kib(pid: int, key: str = "VmRSS") -> int:
    """One `/proc/PID/status` memory figure in KiB (VmRSS, VmHWM, RssAnon, RssShmem)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (every thread's children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            continue
    return sorted(set(found))


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError):
        return []


def process_state(pid: int) -> str | None:
    """The state letter of `pid` (R, S, Z...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
