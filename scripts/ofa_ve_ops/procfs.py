"""Reading processes from Linux's /proc: what the soak, the tests and the stub watchdog share.

Why /proc and not psutil: these are a few small reads, and the watchdog runs in
NVIDIA's container with nothing but the standard library. Every /proc read of the
tools lives here, so there is one place that knows the files' layouts.
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


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, theirs, ...), parents before children.

    Process groups do not cover a tree: the stub watchdog runs tritonserver in a
    group of its own."""
    found: list[int] = []
    todo = children(pid)
    while todo:
        found.extend(todo)
        todo = [c for p in todo for c in children(p)]
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used, in seconds (fields 14 and 15 of
    /proc/PID/stat); 0.0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_fraction(before: list[int], after: list[int]) -> float:
    """Share of the CPU time between two `cpu_times()` readings that the hypervisor
    gave to other guests (steal): wall-clock figures measured then are unreliable."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta[:8])
    return delta[7] / total if total > 0 else 0.0


def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat's `cpu` line: user, nice, system,
    idle, iowait, irq, softirq, steal, ...), in clock ticks."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


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


def process_group(pgid: int) -> list[int]:
    """Every process whose process group is `pgid` (field 5 of /proc/PID/stat), sorted."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid:
            found.append(int(entry))
    return sorted(found)


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages (/proc/loadavg)."""
    with open("/proc/loadavg") as f:
        one, five, fifteen = f.read().split()[:3]
    return float(one), float(five), float(fifteen)


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where it names none, e.g. some Arm)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    return None


def listening_sockets() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) for every TCP socket in LISTEN state."""
    import socket

    found: dict[int, tuple[str, int]] = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = (socket.inet_ntop(family, raw), int(hex_port, 16))
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds open (empty if it is not ours to see)."""
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """Every (address, port) that process `pid` listens on."""
    table = listening_sockets()
    return sorted(table[i] for i in socket_inodes(pid) if i in table)


def pids() -> list[int]:
    """Every process id in /proc."""
    return sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
