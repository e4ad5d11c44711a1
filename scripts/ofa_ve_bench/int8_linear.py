"""What int8 would give the encoder's linear layers on this CPU, beside float32 and bfloat16.

Why: issue 12 asks what int8 gives. PyTorch's eager `quantize_dynamic` replaces no
layer under torch 2.14 (deprecated for torchao), so this measures the kernel such a
path would end in: oneDNN's int8 GEMM (`torch.ops.onednn.qlinear_pointwise`, what
inductor's x86 quantizer emits; AMX-INT8 or VNNI where the CPU has them), with
weights quantised per output channel (symmetric int8) once, and activations
quantised per tensor (asymmetric uint8) on every call, as dynamic quantisation
does. For each of the encoder's three linear shapes (925 tokens: 900 patches and a
sentence) it reports the time per call (at `cpu_peak.best_rate`'s best rate) of
`F.linear` in float32 and in bfloat16, of the int8 path with its activation
quantisation, and of the int8 kernel alone (pre-quantised input: the bound a fused
quantisation could approach), and the int8 path's largest error relative to the
largest float32 output.

    .venv/bin/python -m ofa_ve_bench.int8_linear [--rows 925] [--seconds 1] [--json out.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ofa_ve_bench import machine
from ofa_ve_bench.cpu_peak import best_rate

SHAPES = ((256, 256), (256, 1024), (1024, 256))
"""(in, out) of the encoder's attention projections, fc1 and fc2 (d_model 256, FFN 1024)."""


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: (int8 weight, float scales, zero points)."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scale.float(), torch.zeros(weight.shape[0], dtype=torch.int64)


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Asymmetric uint8 per tensor over [min(x, 0), max(x, 0)]: (uint8, scale, zero point)."""
    lo, hi = torch.aminmax(x)
    lo, hi = float(lo.clamp(max=0.0)), float(hi.clamp(min=0.0))
    scale = (hi - lo) / 255.0 or 1.0
    zero_point = round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255).to(torch.uint8)
    return q, scale, zero_point


class Int8Linear:
    """``F.linear(x, weight, bias)`` through oneDNN's int8 GEMM, float32 in and out."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, rows: int) -> None:
        q, self.w_scale, self.w_zero_point = quantize_weight(weight)
        self.packed = torch.ops.onednn.qlinear_prepack(q, [rows, weight.shape[1]])
        self.bias = bias

    def kernel(self, qx: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(
            qx, scale, zero_point, self.packed, self.w_scale, self.w_zero_point, self.bias,
            1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(*quantize_activation(x))


@torch.inference_mode()
def measure(rows: int = 925, seconds: float = 1.0) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for fan_in, fan_out in SHAPES:
        x = torch.randn(rows, fan_in, generator=generator)
        weight = torch.randn(fan_out, fan_in, generator=generator) * fan_in**-0.5
        bias = torch.randn(fan_out, generator=generator)
        int8 = Int8Linear(weight, bias, rows)
        want = F.linear(x, weight, bias)
        error = float((int8(x) - want).abs().max() / want.abs().max())
        qx = quantize_activation(x)
        xb, wb, bb = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
        flop = 2.0 * rows * fan_in * fan_out
        steps = {
            "float32_ms": lambda: F.linear(x, weight, bias),  # noqa: B023
            "bfloat16_ms": lambda: F.linear(xb, wb, bb),  # noqa: B023
            "int8_dynamic_ms": lambda: int8(x),  # noqa: B023
            "int8_kernel_ms": lambda: int8.kernel(*qx),  # noqa: B023
        }
        times = {name: flop / best_rate(step, flop, seconds) / 1e6 for name, step in steps.items()}
        out.append(
            {
                "shape": f"{rows}x{fan_in}->{fan_out}",
                **{k: round(v, 3) for k, v in times.items()},
                "int8_max_rel_error": round(error, 4),
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=925, help="tokens per item (900 + text)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per shape and path")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = measure(args.rows, args.seconds)
    results = {"rows": rows, "machine": machine.describe().to_dict()}
    header = "| shape | float32 ms | bfloat16 ms | int8 dynamic ms | int8 kernel ms | int8 error |"
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {r['shape']} | {r['float32_ms']} | {r['bfloat16_ms']} | {r['int8_dynamic_ms']} "
        f"| {r['int8_kernel_ms']} | {r['int8_max_rel_error']} |"
        for r in rows
    ]
    machine.report(results, "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
