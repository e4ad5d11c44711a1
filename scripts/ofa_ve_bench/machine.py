"""What a measurement ran on: CPU model, cores, torch, GPU, and how busy the machine was.

Why: the machines these run on are shared and noisy, and a number without the
machine and its load average beside it cannot be compared with anything. /proc is
read through `ofa_ve_ops.procfs` only; `lscpu` answers where /proc/cpuinfo names
no model (some Arm and virtual machines).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from ofa_ve_ops import procfs


def load_average() -> float:
    """The 1-minute load average (0.0 where /proc/loadavg cannot be read)."""
    try:
        return procfs.load_average()[0]
    except (OSError, ValueError):
        return 0.0


def cpu_model() -> str:
    """The CPU model: /proc/cpuinfo's model name, else lscpu's, else the architecture."""
    name = procfs.cpu_model()
    if name:
        return name
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(
                ["lscpu"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_name(device: str = "cuda") -> str | None:
    """The GPU's name as torch sees it, or None without a usable GPU (or without torch)."""
    try:
        import torch
    except ImportError:
        return None
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


@dataclass(frozen=True)
class Machine:
    """The machine a measurement ran on."""

    host: str
    cpu: str
    cores: int
    torch: str
    torch_threads: int
    device: str
    gpu: str | None
    load_average: float

    def __str__(self) -> str:
        text = (
            f"{self.host}: {self.cpu}, {self.cores} cores, torch {self.torch}, torch threads "
            f"{self.torch_threads}, device {self.device}"
        )
        if self.gpu:
            text += f" ({self.gpu})"
        return text + f", load average {self.load_average:.1f}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def describe(device: str = "cpu") -> Machine:
    """The machine now: CPU model, cores, torch and its threads, the GPU for `device`."""
    try:
        import torch

        version, threads = torch.__version__, torch.get_num_threads()
    except ImportError:
        version, threads = "not installed", 0
    return Machine(
        host=platform.node(),
        cpu=cpu_model(),
        cores=os.cpu_count() or 1,
        torch=version,
        torch_threads=threads,
        device=device,
        gpu=gpu_name(device),
        load_average=load_average(),
    )


def nvidia_smi_csv(*query: str) -> str | None:
    """nvidia-smi's CSV answer (no header, no units) to ``query`` flags, e.g.
    ``--query-gpu=name``; None where there is no nvidia-smi or it fails."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def report(results: object, text: str, path: Path | None) -> None:
    """Print a measurement's human-readable `text`; write its `results` as JSON to `path`."""
    print(text)
    if path is not None:
        path.write_text(json.dumps(results, indent=2) + "\n")
