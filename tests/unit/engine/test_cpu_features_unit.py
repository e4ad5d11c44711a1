"""cpu_features: a reduced dtype (or int8) on a CPU only where native kernels exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.cpu_features import (
    FAST_FLAGS,
    INT8_FLAGS,
    check_cpu_dtype,
    check_cpu_int8,
    cpu_flags,
)


def test_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx512f amx_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "sse2", "avx512f", "amx_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("dtype", "flags", "ok"),
    [
        (torch.float32, frozenset(), True),
        (torch.bfloat16, frozenset({"avx512f", "avx512_bf16"}), True),  # e.g. AMD Zen 4/5
        (torch.bfloat16, frozenset({"amx_bf16", "amx_tile"}), True),  # Intel with AMX
        (torch.bfloat16, frozenset({"avx2", "avx512f"}), False),  # would be emulated
        (torch.float16, frozenset({"amx_bf16"}), False),
        (torch.float16, frozenset({"avx512_fp16"}), True),
    ],
)
def test_reduced_types_need_native_kernels(dtype, flags, ok) -> None:
    if ok:
        check_cpu_dtype(dtype, flags)
    else:
        with pytest.raises(ValueError, match="emulated, slower than float32") as info:
            check_cpu_dtype(dtype, flags)
        assert all(flag in str(info.value) for flag in FAST_FLAGS[dtype])


@pytest.mark.parametrize(
    ("flags", "ok"),
    [
        (frozenset({"avx512f", "avx512_vnni"}), True),  # e.g. Cascade Lake, Zen 4
        (frozenset({"avx2", "avx_vnni"}), True),  # e.g. Alder Lake
        (frozenset({"amx_int8", "amx_tile"}), True),  # Sapphire Rapids
        (frozenset({"avx2", "avx512f", "avx512_bf16"}), False),
        (frozenset(), False),  # /proc/cpuinfo unreadable: refused, not guessed
    ],
)
def test_int8_needs_a_dot_product_instruction(flags: frozenset[str], ok: bool) -> None:
    if ok:
        check_cpu_int8(flags)
    else:
        with pytest.raises(ValueError, match=r"quantization int8 .* without fast int8") as info:
            check_cpu_int8(flags)
        assert all(flag in str(info.value) for flag in INT8_FLAGS)


def test_the_loader_applies_the_rule_of_this_cpu(tiny_model_dir: Path) -> None:
    """bfloat16 on CPU loads exactly where this CPU has native kernels; measurement tools
    may switch the check off."""
    native = bool(cpu_flags().intersection(FAST_FLAGS[torch.bfloat16]))
    load = VisualEntailmentEngine.from_model_dir
    if native:
        assert load(tiny_model_dir, device="cpu", dtype=torch.bfloat16).dtype == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="emulated"):
            load(tiny_model_dir, device="cpu", dtype=torch.bfloat16)
    unchecked = load(tiny_model_dir, device="cpu", dtype=torch.bfloat16, check_cpu_dtype=False)
    assert unchecked.dtype == torch.bfloat16
