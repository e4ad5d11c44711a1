"""Where one engine item's time goes, and what this CPU's convolutions allow.

Why: "the engine runs N items/s" says little until it is set against what the hardware
allows, and most of an item's arithmetic is the ResNet stem's convolutions. The peak: the
stem's 3x3 convolutions at its three stages' shapes (eager, and prepacked for oneDNN as the
engine's stem runs them) and an encoder-shaped linear layer, per dtype. With --model-dir,
one item's wall time (distinct JPEGs, batch 1, as a CPU instance runs them) split into the
convolution primitives' own exec time (oneDNN's verbose mode), torch.profiler's self time
of the other operators by kind, and the rest; then what the peak allows and what the
engine and a kernels-only bound reach of it.

    .venv/bin/python -m ofa_ve_bench.profiler [--model-dir DIR] [--dtypes float32,bfloat16]
        [--passes 3] [--peak-seconds 2] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ofa_ve_bench import machine
from ofa_ve_bench.results import listed, timed

GFLOP_PER_ITEM = 38.5  # multiply-adds x 2 of one item at 480 px (docs/benchmarks.md)
DTYPES = ("float32", "bfloat16")
CONV_SHAPES = ((64, 120, 2), (128, 60, 2), (256, 30, 8))
"""(channels, side, batch) of the stem's three stages; the last at 8 images, where AMX is
busiest (the peak is what the CPU allows, not what a batch of one gets)."""
KINDS = (  # torch.profiler operator names -> the kind of work (first match wins)
    ("convolution", ("convolution", "LlgaPartition")),  # the graph stem's fused partitions
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("linear", ("addmm", "aten::mm", "aten::bmm", "linear_pointwise", "aten::matmul")),
    ("norm", ("layer_norm",)),
    ("pooling", ("pool",)),
)
_CONV_SHAPE = re.compile(
    r"mb(?P<mb>\d+)_(?:g(?P<g>\d+))?ic(?P<ic>\d+)oc(?P<oc>\d+)_"
    r"(?:id\d+od\d+kd\d+sd\d+dd\d+pd\d+_)?"
    r"ih\d+oh(?P<oh>\d+)kh(?P<kh>\d+)sh\d+dh\d+ph\d+_"
    r"iw\d+ow(?P<ow>\d+)kw(?P<kw>\d+)"
)


def best_rate(step: Callable[[], object], flop: float, seconds: float) -> float:
    """GFLOP/s of `step` (`flop` per call): the best timed window of at least 0.2 s (and 3
    calls) within `seconds`, the first after 3 warm-up calls (oneDNN caches its kernels)."""
    best, end, warmup = 0.0, time.perf_counter() + seconds, 3
    while time.perf_counter() < end:
        window = timed("", 1, lambda _: step(), 0.2, min_calls=3, warmup=warmup)
        best, warmup = max(best, flop * window.items_per_s / 1e9), 0
    return best


def measure_peak(seconds: float, dtypes: Sequence[str] = DTYPES) -> dict[str, dict[str, float]]:
    """dtype -> shape -> GFLOP/s."""
    import torch

    mkldnn = getattr(torch.ops, "mkldnn", None)
    prepack = torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_convolution_pointwise")
    geometry = ([1, 1], [1, 1], [1, 1], 1)
    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name in dtypes:
            dtype, rates = getattr(torch, name), {}
            for channels, size, batch in CONV_SHAPES:
                conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
                conv = conv.to(dtype=dtype, memory_format=torch.channels_last).eval()
                x = torch.randn(batch, channels, size, size, dtype=dtype)
                x = x.to(memory_format=torch.channels_last)
                steps = {"eager": functools.partial(conv, x)}
                if prepack:  # oneDNN's fused operator on a weight reordered once
                    w = conv.weight.detach()
                    w = mkldnn._reorder_convolution_weight(w, *geometry, list(x.shape))
                    steps["prepacked"] = functools.partial(
                        mkldnn._convolution_pointwise, x, w, None, *geometry, "none", [], ""
                    )
                flop = 2.0 * batch * channels * channels * 9 * size * size
                for how, step in steps.items():
                    key = f"conv3x3_{channels}ch_{size}px_b{batch}_{how}"
                    rates[key] = best_rate(step, flop, seconds)
            linear = torch.nn.Linear(256, 1024).to(dtype=dtype).eval()
            step = functools.partial(linear, torch.randn(930, 256, dtype=dtype))
            rates["linear_930x256x1024"] = best_rate(step, 2.0 * 930 * 256 * 1024, seconds)
            out[name] = rates
    return out


def conv_peak(rates: dict[str, dict[str, float]]) -> dict[str, float]:
    """dtype -> the best convolution rate of `measure_peak`'s figures (GFLOP/s)."""
    return {d: max(v for k, v in r.items() if k.startswith("conv")) for d, r in rates.items()}


def peak_report(rates: dict[str, dict[str, float]]) -> str:
    dtypes, peak = list(rates), conv_peak(rates)
    lines = [f"{'shape':<32}" + "".join(f"{d:>12}" for d in dtypes) + "   (GFLOP/s)"]
    for shape in rates[dtypes[0]]:
        lines.append(f"{shape:<32}" + "".join(f"{rates[d][shape]:>12.0f}" for d in dtypes))
    allows = ", ".join(f"{d} {peak[d] / GFLOP_PER_ITEM:.1f}" for d in dtypes)
    lines.append(f"items/s the best convolution rate allows at {GFLOP_PER_ITEM} GFLOP/item: "
                 + allows)
    return "\n".join(lines)


def parse_verbose(text: str) -> list[dict[str, Any]]:
    """The `exec` lines of oneDNN's verbose output (v1: `onednn_verbose,[time,]v1,primitive,
    exec,cpu,KIND,IMPL,...,PROBLEM,MS`): kind, implementation, ms, and GFLOP (convolutions
    whose shape parses; else 0)."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(",")
        if fields[0] != "onednn_verbose" or "exec" not in fields[:6]:
            continue
        at = fields.index("exec")
        if at < 1 or fields[at - 1] != "primitive" or len(fields) < at + 5:
            continue
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        match = _CONV_SHAPE.search(fields[-2]) if fields[at + 2] == "convolution" else None
        gflop = 0.0
        if match:
            v = {k: int(x) if x else 1 for k, x in match.groupdict().items()}
            gflop = 2e-9 * v["mb"] * v["oc"] * v["oh"] * v["ow"] * v["kh"] * v["kw"] * v["ic"]
            gflop /= v["g"]
        out.append(
            {"kind": fields[at + 2], "implementation": fields[at + 3], "ms": ms, "gflop": gflop}
        )
    return out


def kind_of(op_name: str) -> str:
    kinds = (kind for kind, needles in KINDS if any(n in op_name for n in needles))
    return next(kinds, "other operators")


@contextlib.contextmanager
def _captured_stdout() -> Iterator[list[str]]:
    """What C code writes to file descriptor 1 inside the block (oneDNN's verbose lines)."""
    sink: list[str] = []
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield sink
        finally:
            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def measure_split(model_dir: Path, dtype: str, passes: int, count: int | None = None) -> dict:
    """One engine in `dtype`, ms per item: `wall_ms` (median of timed passes, nothing
    watching), `profiled_wall_ms` (a pass under torch.profiler: what the split adds up to),
    `op_self_ms` (its self time by kind), `conv_exec_ms` and `conv_gflop` (a pass in
    oneDNN's verbose mode), the kernels-only bound."""
    import torch
    from ofa_ve_data import workload
    from torch.profiler import ProfilerActivity, profile

    from ofa_ve_bench.engine_runner import load_engine, prepare_all

    engine = load_engine(model_dir, "cpu", dtype, 1)
    items = workload.items(formats="jpeg", seed=0)[:count]

    def one_pass() -> float:
        """ms per item of one pass over the items."""
        run = timed("", 1, lambda i: engine.predict(prepare_all(engine, [items[i]])), 0, len(items))
        return run.seconds * 1000 / len(items)

    one_pass()  # warm-up: every text length and image once
    walls = [one_pass() for _ in range(passes)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled_ms = one_pass()
    by_kind: dict[str, float] = {}
    for event in prof.key_averages():
        if not event.key.startswith("ProfilerStep"):
            kind = kind_of(event.key)
            by_kind[kind] = by_kind.get(kind, 0.0) + event.self_cpu_time_total / 1000 / len(items)
    onednn = torch.backends.mkldnn
    with _captured_stdout() as captured, onednn.verbose(onednn.VERBOSE_ON):
        one_pass()
    convs = [p for p in parse_verbose("".join(captured)) if p["kind"] == "convolution"]
    split = {
        "dtype": dtype,
        "items": len(items),
        "wall_ms": statistics.median(walls),
        "profiled_wall_ms": profiled_ms,
        "conv_exec_ms": sum(p["ms"] for p in convs) / len(items),
        "conv_gflop": sum(p["gflop"] for p in convs) / len(items),
        "conv_implementations": sorted({p["implementation"] for p in convs}),
        "op_self_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
    }
    kernels = split["conv_exec_ms"] + by_kind.get("linear", 0.0) + by_kind.get("attention", 0.0)
    split["conv_gflops"] = split["conv_gflop"] / split["conv_exec_ms"] * 1000 if convs else 0.0
    split["kernel_ms"] = kernels
    split["kernel_bound_items_per_s"] = 1000 / kernels if kernels else 0.0
    return split


def split_report(splits: Sequence[dict], peak: dict[str, float] | None) -> str:
    lines = []
    for s in splits:
        rest = s["profiled_wall_ms"] - sum(s["op_self_ms"].values())
        lines += [
            f"{s['dtype']}: {s['wall_ms']:.1f} ms/item wall ({1000 / s['wall_ms']:.2f} items/s), "
            f"{s['items']} distinct items, batch 1",
            f"  convolution primitives (oneDNN exec): {s['conv_exec_ms']:.1f} ms, "
            f"{s['conv_gflop']:.1f} GFLOP, {s['conv_gflops']:.0f} GFLOP/s "
            f"[{', '.join(s['conv_implementations'])}]",
            *(f"  {k:<28} {ms:7.1f} ms (profiler self time)" for k, ms in s["op_self_ms"].items()),
            f"  {'outside the operators':<28} {rest:7.1f} ms (the profiled pass's "
            f"{s['profiled_wall_ms']:.1f} ms minus the above)",
            f"  kernels only (conv exec + linear + attention): {s['kernel_ms']:.1f} ms "
            f"-> at most {s['kernel_bound_items_per_s']:.2f} items/s",
        ]
        if peak and s["dtype"] in peak:
            allows = peak[s["dtype"]] / GFLOP_PER_ITEM
            lines.append(
                f"  convolution peak {peak[s['dtype']]:.0f} GFLOP/s allows {allows:.1f} items/s: "
                f"engine {1000 / s['wall_ms'] / allows:.2f} of it, kernels-only bound "
                f"{s['kernel_bound_items_per_s'] / allows:.2f}; the convolutions themselves "
                f"run at {s['conv_gflops'] / peak[s['dtype']]:.2f} of the peak"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model-dir", type=Path, help="also split an item's time (the engine)")
    add("--dtypes", default="float32,bfloat16", help="comma-separated")
    add("--passes", type=int, default=3, help="timed passes over the items")
    add("--peak-seconds", type=float, default=2.0, help="per peak shape (0: no peak)")
    add("--threads", type=int, help="torch threads (default: torch's)")
    add("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    dtypes = listed(args.dtypes)
    if not dtypes or any(d not in DTYPES for d in dtypes):
        parser.error(f"--dtypes: each one of {', '.join(DTYPES)}")
    if args.model_dir is None and args.peak_seconds <= 0:
        parser.error("nothing to measure: give --model-dir or a --peak-seconds above 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": machine.describe().to_dict()}
    texts, peak = [], None
    if args.peak_seconds > 0:
        rates = measure_peak(args.peak_seconds, dtypes)
        peak = conv_peak(rates)
        results.update(gflops=rates, conv_peak_gflops=peak, gflop_per_item=GFLOP_PER_ITEM)
        texts.append(peak_report(rates))
    if args.model_dir is not None:
        results["splits"] = [measure_split(args.model_dir, d, args.passes) for d in dtypes]
        texts.append(split_report(results["splits"], peak))
    machine.report(results, "\n\n".join(texts), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
