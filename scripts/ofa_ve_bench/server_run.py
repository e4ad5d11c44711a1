"""A real tritonserver (`ofa_ve_ops.server_process.TritonServer`) on an edited copy of the
repository, and the memory it holds.

Why a copy: the committed config.pbtxt is the product; a tool's settings
(`model_config.ConfigEdits`) go into a temporary copy, and the config the server ran
is kept with the results. Memory is read from /proc (`ofa_ve_ops.procfs`) for the
server's process group, GPU memory per process from nvidia-smi.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ofa_ve_ops import model_config, procfs
from ofa_ve_ops.paths import MODEL_NAME, MODEL_REPOSITORY, STUB_NAME

from ofa_ve_bench import machine


def parse_gpu_memory(csv_text: str | None) -> dict[int, int]:
    """nvidia-smi's `pid, used_memory` CSV (no header, no units) -> {pid: MiB}."""
    usage = {}
    for line in (csv_text or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            usage[int(parts[0])] = int(parts[1])
    return usage


def _mib(pid: int, key: str) -> float:
    try:
        return round(procfs.vm_kib(pid, key) / 1024, 1)
    except (OSError, KeyError):
        return 0.0


def server_memory(server_pid: int) -> dict[str, object]:
    """Peak RSS (VmHWM) of tritonserver and each stub, and GPU memory per process."""
    gpu = parse_gpu_memory(machine.nvidia_smi_csv("--query-compute-apps=pid,used_memory"))
    processes = []
    for pid in procfs.process_group(server_pid):
        argv = procfs.cmdline(pid)
        name = Path(argv[0]).name if argv else "other"
        name = "tritonserver" if pid == server_pid else "stub" if name == STUB_NAME else name
        row = {"pid": pid, "process": name, "peak_rss_mib": _mib(pid, "VmHWM")}
        row["rss_mib"] = _mib(pid, "VmRSS")
        processes.append({**row, **({"gpu_mib": gpu[pid]} if pid in gpu else {})})
    total = round(sum(p["peak_rss_mib"] for p in processes), 1)
    return {"processes": processes, "peak_rss_total_mib": total}


def start_server(model_dir: Path, log_dir: Path, edits: model_config.ConfigEdits,
                 env: Mapping[str, str] | None = None, ready_timeout_s: float | None = None,
                 model_repository: Path | None = None) -> Any:
    """A READY tritonserver on a copy of the repository with `edits` (the caller stops it).

    The server object also carries `config_text` (what it ran) and `load_before_start`.
    """
    from ofa_ve_ops.server_process import DEFAULT_READY_TIMEOUT_S, TritonServer

    scratch = Path(tempfile.mkdtemp(prefix="bench-repo-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # the edited copy
    repo = model_config.make_model_repository(
        scratch / "model_repository", edits, source=model_repository or MODEL_REPOSITORY
    )
    server = TritonServer(repo, model_dir, log_dir=log_dir, env=dict(env or {}))
    server.load_before_start = machine.load_average()
    server.config_text = (repo / MODEL_NAME / "config.pbtxt").read_text()
    server.start()
    try:
        server.wait_ready(timeout=ready_timeout_s or DEFAULT_READY_TIMEOUT_S)
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
