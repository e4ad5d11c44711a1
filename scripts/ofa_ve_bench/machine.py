"""What a measurement ran on: CPU, cores, torch, GPU, and how busy the machine was.

Why: the machines these run on are shared and noisy, and a figure without the machine
and its load average beside it cannot be compared with anything. /proc is read through
`ofa_ve_ops.procfs`; the CPU's native reduced-precision features are the engine's own
reading (`ofa_ve_engine.cpu_features`), the one that decides whether bfloat16 is native.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ofa_ve_ops import procfs


def load_average() -> float:
    """The 1-minute load average (0.0 where /proc/loadavg cannot be read)."""
    try:
        return procfs.load_average()[0]
    except (OSError, ValueError):
        return 0.0


@dataclass(frozen=True)
class Machine:
    host: str
    cpu: str
    cpu_features: tuple[str, ...]
    """The CPU flags that give bfloat16 or float16 native kernels (AMX, AVX512-BF16...)."""
    cores: int
    torch: str
    torch_threads: int
    device: str
    gpu: str | None
    load_average: float

    def __str__(self) -> str:
        features = f" ({', '.join(self.cpu_features)})" if self.cpu_features else ""
        gpu = f" ({self.gpu})" if self.gpu else ""
        return (
            f"{self.host}: {self.cpu}{features}, {self.cores} cores, torch {self.torch}, "
            f"torch threads {self.torch_threads}, device {self.device}{gpu}, "
            f"load average {self.load_average:.1f}"
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def describe(device: str = "cpu") -> Machine:
    """The machine now: CPU model and features, cores, torch and its threads, the GPU."""
    torch_version, threads, features, gpu = "not installed", 0, (), None
    try:
        import torch
        from ofa_ve_engine import cpu_features

        torch_version, threads = torch.__version__, torch.get_num_threads()
        fast = {flag for flags in cpu_features.FAST_FLAGS.values() for flag in flags}
        features = tuple(sorted(cpu_features.cpu_flags() & fast))
        if device.startswith("cuda") and torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(torch.device(device))
    except ImportError:
        pass
    cpu = procfs.cpu_model() or platform.processor() or platform.machine()
    return Machine(host=platform.node(), cpu=cpu, cpu_features=features,
                   cores=os.cpu_count() or 1, torch=torch_version, torch_threads=threads,
                   device=device, gpu=gpu, load_average=load_average())


def version(name: str, imported: bool = True) -> str:
    """`name`'s version as this Python imports it (and from where), or as installed."""
    try:
        if not imported:
            return importlib.metadata.version(name)
        module = importlib.import_module(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    except Exception as exc:  # missing, or broken against this numpy/torch
        return f"not importable ({type(exc).__name__}: {exc})"[:200]
    found = getattr(module, "__version__", None) or version(name, imported=False)
    return f"{found} ({Path(getattr(module, '__file__', '') or '?').parent})"


def nvidia_smi_csv(*query: str) -> str | None:
    """nvidia-smi's CSV answer (no header, no units) to ``query`` flags, e.g.
    ``--query-gpu=name``; None where there is no nvidia-smi or it fails."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def report(results: object, text: str, path: Path | None) -> None:
    """Print a measurement's human-readable `text`; write its `results` as JSON to `path`."""
    print(text)
    if path is not None:
        path.write_text(json.dumps(results, indent=2) + "\n")


def say(tool: str, message: str) -> None:
    """A tool's progress line, timed, on stderr (stdout is for its results)."""
    print(f"[{tool} {dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)
