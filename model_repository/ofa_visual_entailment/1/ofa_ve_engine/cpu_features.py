"""Whether this CPU has fast kernels for a reduced floating-point type.

Why: on a CPU, bfloat16 pays off only with native instructions (AVX512-BF16 or
AMX-BF16: less CPU per item than float32, docs/benchmarks.md); elsewhere PyTorch
emulates it and the network runs slower than in float32. float16 needs AVX512-FP16
or AMX-FP16 likewise. Serving refuses a type the CPU would only emulate, with a
message that says so, instead of quietly running slower.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

FAST_FLAGS: dict[torch.dtype, tuple[str, ...]] = {
    torch.bfloat16: ("amx_bf16", "avx512_bf16"),
    torch.float16: ("amx_fp16", "avx512_fp16"),
}
"""/proc/cpuinfo flags any one of which gives a type native kernels (oneDNN uses them)."""


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def check_cpu_dtype(dtype: torch.dtype, flags: frozenset[str] | None = None) -> None:
    """ValueError when `dtype` has no native kernels on this CPU (float32 always has)."""
    wanted = FAST_FLAGS.get(dtype)
    if wanted is None:
        return
    have = cpu_flags() if flags is None else flags
    if not have.intersection(wanted):
        name = str(dtype).replace("torch.", "")
        raise ValueError(
            f"dtype {name} on this CPU would be emulated, slower than float32: it lacks "
            f"{' and '.join(wanted)} (native {name} kernels). Use dtype float32 here, or "
            f"a CPU with one of them (docs/benchmarks.md, CPU precision)."
        )
