"""(c) of the benchmark: a real tritonserver on a configured copy of the repository.

Why a copy: the committed config.pbtxt is the product; a benchmark's settings
(`model_config.ConfigEdits`) go into a temporary copy, and the exact config the
server ran is kept with the results. Memory is read from /proc (through
`ofa_ve_ops.procfs`) for the server's whole process group, and GPU memory per
process from nvidia-smi.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ofa_ve_ops import procfs
from ofa_ve_ops.paths import MODEL_NAME, MODEL_REPOSITORY, STUB_NAME

from ofa_ve_bench import machine, model_config
from ofa_ve_bench.machine import load_average


def _kib(pid: int, key: str) -> int:
    try:
        return procfs.vm_kib(pid, key)
    except (OSError, KeyError):
        return 0


def gpu_memory_by_pid() -> dict[int, int]:
    """MiB of GPU memory per process, from nvidia-smi (empty where there is none)."""
    out = machine.nvidia_smi_csv("--query-compute-apps=pid,used_memory")
    return {} if out is None else parse_gpu_memory(out)


def parse_gpu_memory(csv_text: str) -> dict[int, int]:
    """nvidia-smi's `pid, used_memory` CSV (no header, no units) -> {pid: MiB}."""
    usage = {}
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            usage[int(parts[0])] = int(parts[1])
    return usage


def server_memory(server_pid: int) -> dict[str, object]:
    """Peak RSS (VmHWM) of tritonserver and each stub, and GPU memory per process."""
    processes = []
    for pid in procfs.process_group(server_pid):
        argv = procfs.cmdline(pid)
        if pid == server_pid:
            name = "tritonserver"
        elif argv and argv[0].endswith(STUB_NAME):
            name = "stub"
        else:
            name = Path(argv[0]).name if argv else "other"
        processes.append(
            {
                "pid": pid,
                "process": name,
                "peak_rss_mib": round(_kib(pid, "VmHWM") / 1024, 1),
                "rss_mib": round(_kib(pid, "VmRSS") / 1024, 1),
            }
        )
    gpu = gpu_memory_by_pid()
    for p in processes:
        if p["pid"] in gpu:
            p["gpu_mib"] = gpu[p["pid"]]
    return {
        "processes": processes,
        "peak_rss_total_mib": round(sum(p["peak_rss_mib"] for p in processes), 1),
    }


def start_server(
    model_dir: Path,
    log_dir: Path,
    edits: model_config.ConfigEdits,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float | None = None,
    model_repository: Path | None = None,
) -> Any:
    """A READY tritonserver on a copy of the repository with `edits` (the caller stops it).

    The server object also carries `config_text` (what it ran) and `load_before_start`.
    """
    from ofa_ve_ops.server_process import TritonServer

    scratch = Path(tempfile.mkdtemp(prefix="bench-repo-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # the edited copy
    repo = model_config.make_model_repository(
        scratch / "model_repository",
        edits,
        source=model_repository or MODEL_REPOSITORY,
    )
    server = TritonServer(repo, model_dir, log_dir=log_dir, env=dict(env or {}))
    server.load_before_start = load_average()
    server.config_text = (repo / MODEL_NAME / "config.pbtxt").read_text()
    server.start()
    try:
        if ready_timeout_s is None:
            server.wait_ready()
        else:
            server.wait_ready(timeout=ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def server_facts(server: Any) -> dict[str, object]:
    """Cold start, load before it, the config it ran and its memory (while it still runs)."""
    return {
        "cold_start_to_ready_s": round(server.ready_after_s or 0.0, 2),
        "load_before_start": round(server.load_before_start, 2),
        "config": server.config_text,
        "memory": server_memory(server.pid),
    }
