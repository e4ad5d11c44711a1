"""Whether this CPU has fast kernels for a reduced floating-point type, or for int8.

Why: on a CPU, bfloat16 pays off only with native instructions (AVX512-BF16 or
AMX-BF16: less CPU per item than float32, docs/benchmarks.md); elsewhere PyTorch
emulates it and the network runs slower than in float32. float16 needs AVX512-FP16
or AMX-FP16 likewise. int8 convolutions (``quantization int8``) pay only with an
int8 dot-product instruction (VNNI, or AMX-INT8): without one oneDNN falls back to
slow int8 kernels. Serving refuses what the CPU would only emulate, with a message
that says so, instead of quietly running slower.
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

INT8_FLAGS: tuple[str, ...] = ("amx_int8", "avx512_vnni", "avx_vnni")
"""/proc/cpuinfo flags any one of which gives oneDNN fast int8 kernels (VNNI or AMX)."""


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


def check_cpu_int8(flags: frozenset[str] | None = None) -> None:
    """ValueError when this CPU has no int8 dot-product instructions (VNNI or AMX-INT8)."""
    have = cpu_flags() if flags is None else flags
    if not have.intersection(INT8_FLAGS):
        raise ValueError(
            f"quantization int8 on this CPU would run without fast int8 kernels: it lacks "
            f"{', '.join(INT8_FLAGS[:-1])} and {INT8_FLAGS[-1]} (int8 dot-product "
            f"instructions). Use quantization "
            f"none here, or a CPU with one of them (docs/configuration.md)."
        )


def has_amx(kind: str, flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU has AMX tiles for ``kind`` (``bf16`` or ``int8``): there a
    forward pass of a few items costs less per item than one at a time."""
    have = cpu_flags() if flags is None else flags
    return f"amx_{kind}" in have
