"""What this CPU's convolutions and matrix products reach in float32 and bfloat16.

Why: "the engine runs N items/s" says little until it is set against what the
hardware allows. One item is about 38.5 GFLOP, 30 of them in the ResNet stem's
convolutions, so the peak of the stem's 3x3 convolutions (its three stages' shapes,
channels-last, eager and with the weight prepacked for oneDNN, the best of them)
and of an encoder-shaped linear layer (930 rows, 256 -> 1024) bound what the engine
can do: items/s x 38.5 GFLOP
against these figures is the fraction of the machine the engine uses.

    .venv/bin/python -m ofa_ve_bench.cpu_peak [--threads N] [--seconds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ofa_ve_bench import machine

GFLOP_PER_ITEM = 38.5
DTYPES = ("float32", "bfloat16")


def best_rate(step: Callable[[], object], flop: float, seconds: float) -> float:
    """GFLOP/s of `step` (its `flop` per call), best of the timed windows of at least
    0.2 s (and 3 calls) within `seconds`."""
    for _ in range(3):  # warm-up: oneDNN picks and caches its kernels
        step()
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        calls = 0
        while calls < 3 or time.perf_counter() - started < 0.2:
            step()
            calls += 1
        best = max(best, flop * calls / (time.perf_counter() - started) / 1e9)
    return best


CONV_SHAPES = ((64, 120, 2), (128, 60, 2), (256, 30, 8))
"""(channels, side, batch) of the 3x3 convolutions measured: the stem's three stages.
The last is the third stage at a batch of 8 images, where AMX is busiest: the peak
has to be what the CPU allows, not what the engine's batch of one gets."""


def _conv_steps(
    channels: int, size: int, batch: int, dtype: Any
) -> dict[str, Callable[[], object]]:
    """The convolution run two ways: eager (nn.Conv2d: its weight reordered on every
    call) and prepacked (oneDNN's fused operator on a weight reordered once, as the
    engine's oneDNN stem runs it); the faster one is what this CPU allows."""
    import torch

    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    conv = conv.to(dtype=dtype, memory_format=torch.channels_last).eval()
    x = torch.randn(batch, channels, size, size, dtype=dtype).to(memory_format=torch.channels_last)
    steps: dict[str, Callable[[], object]] = {"eager": functools.partial(conv, x)}
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_convolution_pointwise"):
        geometry = ([1, 1], [1, 1], [1, 1], 1)
        weight = mkldnn._reorder_convolution_weight(conv.weight.detach(), *geometry, list(x.shape))
        steps["prepacked"] = functools.partial(
            mkldnn._convolution_pointwise, x, weight, None, *geometry, "none", [], ""
        )
    return steps


def measure(seconds: float) -> dict[str, dict[str, float]]:
    import torch

    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name in DTYPES:
            dtype = getattr(torch, name)
            rates: dict[str, float] = {}
            for channels, size, batch in CONV_SHAPES:
                flop = 2.0 * batch * channels * channels * 9 * size * size
                shape = f"conv3x3_{channels}ch_{size}px_b{batch}"
                for how, step in _conv_steps(channels, size, batch, dtype).items():
                    rates[f"{shape}_{how}"] = best_rate(step, flop, seconds)
            linear = torch.nn.Linear(256, 1024).to(dtype=dtype).eval()
            rows = torch.randn(930, 256, dtype=dtype)
            step = functools.partial(linear, rows)
            rates["linear_930x256x1024"] = best_rate(step, 2.0 * 930 * 256 * 1024, seconds)
            out[name] = rates
    return out


def conv_peak(rates: dict[str, dict[str, float]]) -> dict[str, float]:
    """dtype -> the best convolution rate of `measure`'s figures (GFLOP/s)."""
    return {d: max(v for k, v in r.items() if k.startswith("conv")) for d, r in rates.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per shape (default 2)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rates = measure(args.seconds)
    results: dict[str, Any] = {"machine": machine.describe().to_dict(), "gflops": rates}
    lines = [f"{'shape':<28}" + "".join(f"{d:>12}" for d in DTYPES) + "   (GFLOP/s)"]
    for shape in rates[DTYPES[0]]:
        lines.append(f"{shape:<28}" + "".join(f"{rates[d][shape]:>12.0f}" for d in DTYPES))
    peak = conv_peak(rates)
    results["items_per_s_bound"] = {d: peak[d] / GFLOP_PER_ITEM for d in DTYPES}
    lines.append(
        "items/s the best convolution rate would allow at 38.5 GFLOP/item: "
        + ", ".join(f"{d} {results['items_per_s_bound'][d]:.1f}" for d in DTYPES)
    )
    machine.report(results, "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
