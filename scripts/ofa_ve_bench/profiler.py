"""Where one engine item's time goes, and what this CPU's convolutions allow.

Why: "the engine runs N items/s" says little until it is set against what the hardware
allows; most of an item's arithmetic is the ResNet stem's convolutions. Two things, in one
run: the peak (the stem's 3x3 convolutions at its three stages' shapes, eager and with the
weight prepacked for oneDNN, and an encoder-shaped linear layer, per dtype, in GFLOP/s);
and with --model-dir, the split of one item's wall time (distinct JPEGs, batch 1, as the
CPU instance runs them) into the oneDNN convolution primitives' own exec time (oneDNN's
verbose mode), torch.profiler's self time of the other operators by kind, and the rest;
then the kernels-only bound and the share of the peak the engine and that bound reach.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ofa_ve_bench import machine
from ofa_ve_bench.results import timed

GFLOP_PER_ITEM = 38.5
"""Multiply-adds x 2 of one item at 480 px (docs/benchmarks.md)."""
DTYPES = ("float32", "bfloat16")
CONV_SHAPES = ((64, 120, 2), (128, 60, 2), (256, 30, 8))
"""(channels, side, batch) of the 3x3 convolutions of the peak: the stem's three stages,
the last at 8 images, where AMX is busiest (the peak is what the CPU allows, not what
the engine's batch of one gets)."""

# torch.profiler operator names -> the kind of work they are (first match wins).
KINDS = (
    ("convolution", ("convolution",)),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("linear", ("addmm", "aten::mm", "aten::bmm", "linear_pointwise", "aten::matmul")),
    ("norm", ("layer_norm",)),
    ("pooling", ("pool",)),
)
KERNEL_KINDS = ("convolution", "linear", "attention")
"""The kinds whose time is the kernels' own arithmetic (the bound leaves only these)."""

_CONV_SHAPE = re.compile(
    r"mb(?P<mb>\d+)_(?:g(?P<g>\d+))?ic(?P<ic>\d+)oc(?P<oc>\d+)_"
    r"(?:id\d+od\d+kd\d+sd\d+dd\d+pd\d+_)?"
    r"ih\d+oh(?P<oh>\d+)kh(?P<kh>\d+)sh\d+dh\d+ph\d+_"
    r"iw\d+ow(?P<ow>\d+)kw(?P<kw>\d+)"
)


# ------------------------------------------------------------------ the peak


def best_rate(step: Callable[[], object], flop: float, seconds: float) -> float:
    """GFLOP/s of `step` (`flop` per call): the best timed window of at least 0.2 s (and 3
    calls) within `seconds`, after 3 warm-up calls (oneDNN caches its kernels)."""
    for _ in range(3):
        step()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        window = timed("", 1, lambda _: step(), 0.2, min_calls=3)
        best = max(best, flop * window.items_per_s / 1e9)
    return best


def _conv_steps(
    channels: int, size: int, batch: int, dtype: Any
) -> dict[str, Callable[[], object]]:
    """The convolution eager (its weight reordered on every call) and prepacked (oneDNN's
    fused operator on a weight reordered once, as the engine's oneDNN stem runs it)."""
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


def measure_peak(seconds: float, dtypes: Sequence[str] = DTYPES) -> dict[str, dict[str, float]]:
    """dtype -> shape -> GFLOP/s."""
    import torch

    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name in dtypes:
            dtype = getattr(torch, name)
            rates: dict[str, float] = {}
            for channels, size, batch in CONV_SHAPES:
                flop = 2.0 * batch * channels * channels * 9 * size * size
                shape = f"conv3x3_{channels}ch_{size}px_b{batch}"
                for how, step in _conv_steps(channels, size, batch, dtype).items():
                    rates[f"{shape}_{how}"] = best_rate(step, flop, seconds)
            linear = torch.nn.Linear(256, 1024).to(dtype=dtype).eval()
            step = functools.partial(linear, torch.randn(930, 256, dtype=dtype))
            rates["linear_930x256x1024"] = best_rate(step, 2.0 * 930 * 256 * 1024, seconds)
            out[name] = rates
    return out


def conv_peak(rates: dict[str, dict[str, float]]) -> dict[str, float]:
    """dtype -> the best convolution rate of `measure_peak`'s figures (GFLOP/s)."""
    return {d: max(v for k, v in r.items() if k.startswith("conv")) for d, r in rates.items()}


def peak_report(rates: dict[str, dict[str, float]]) -> str:
    dtypes = list(rates)
    lines = [f"{'shape':<32}" + "".join(f"{d:>12}" for d in dtypes) + "   (GFLOP/s)"]
    for shape in rates[dtypes[0]]:
        lines.append(f"{shape:<32}" + "".join(f"{rates[d][shape]:>12.0f}" for d in dtypes))
    peak = conv_peak(rates)
    lines.append(
        f"items/s the best convolution rate allows at {GFLOP_PER_ITEM} GFLOP/item: "
        + ", ".join(f"{d} {peak[d] / GFLOP_PER_ITEM:.1f}" for d in dtypes)
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ an item's split


@dataclass
class Primitive:
    """One oneDNN primitive execution from its verbose line."""

    kind: str
    implementation: str
    problem: str
    ms: float

    @property
    def gflop(self) -> float:
        """Multiply-adds x 2 of a convolution (0 for other kinds or unparsed shapes)."""
        match = _CONV_SHAPE.search(self.problem) if self.kind == "convolution" else None
        if match is None:
            return 0.0
        v = {k: int(x) if x else 1 for k, x in match.groupdict().items()}
        macs = v["mb"] * v["oc"] * v["oh"] * v["ow"] * v["kh"] * v["kw"] * v["ic"] // v["g"]
        return 2.0 * macs / 1e9


def parse_verbose(text: str) -> list[Primitive]:
    """The `exec` lines of oneDNN's verbose output (v1 format: `onednn_verbose,[time,]
    v1,primitive,exec,cpu,KIND,IMPL,...,PROBLEM,MS`)."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(",")
        if not fields or fields[0] != "onednn_verbose" or "exec" not in fields[:6]:
            continue
        at = fields.index("exec")
        if at < 1 or fields[at - 1] != "primitive" or len(fields) < at + 5:
            continue
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        out.append(Primitive(fields[at + 2], fields[at + 3], fields[-2], ms))
    return out


def kind_of(op_name: str) -> str:
    for kind, needles in KINDS:
        if any(n in op_name for n in needles):
            return kind
    return "other operators"


@contextlib.contextmanager
def _captured_stdout() -> Iterator[list[str]]:
    """What C code writes to file descriptor 1 inside the block (oneDNN's verbose lines)."""
    sink: list[str] = []
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield sink
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


@dataclass
class Split:
    """One dtype's item, ms per item: `wall_ms` the median pass with nothing watching,
    `profiled_wall_ms` the pass under the profiler (what the split adds up to),
    `conv_exec_ms` oneDNN's own exec time of the convolutions, `op_self_ms` the
    profiler's self time by kind."""

    dtype: str
    items: int
    wall_ms: float
    profiled_wall_ms: float
    conv_exec_ms: float
    conv_gflop: float
    conv_implementations: list[str]
    op_self_ms: dict[str, float] = field(default_factory=dict)

    @property
    def conv_gflops(self) -> float:
        return self.conv_gflop / self.conv_exec_ms * 1000 if self.conv_exec_ms else 0.0

    @property
    def kernel_ms(self) -> float:
        """The convolution primitives' exec time plus linear and attention operators."""
        return self.conv_exec_ms + sum(self.op_self_ms.get(k, 0.0) for k in KERNEL_KINDS[1:])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            conv_gflops=self.conv_gflops,
            kernel_ms=self.kernel_ms,
            items_per_s=1000 / self.wall_ms,
            kernel_bound_items_per_s=1000 / self.kernel_ms if self.kernel_ms else None,
        )
        return out


def measure_split(model_dir: Path, dtype: str, passes: int, count: int | None = None) -> Split:
    """One engine in `dtype`: timed passes over the items, then one pass under the
    profiler and one in oneDNN's verbose mode."""
    import torch
    from ofa_ve_data import workload
    from torch.profiler import ProfilerActivity, profile

    from ofa_ve_bench.engine_runner import build_engine, prepare_all

    engine = build_engine(model_dir, "cpu", {"dtype": dtype}, forward_batch_size=1)
    items = workload.items(formats="jpeg", seed=0)[:count]

    def one_pass(_: int = 0) -> None:
        for item in items:
            engine.predict(prepare_all(engine, [item]))

    one_pass()  # warm-up: every text length and image once
    walls = [ms / len(items) for ms in timed("", 1, one_pass, 0, min_calls=passes).latencies_ms]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled_ms = timed("", 1, one_pass, 0).latencies_ms[0] / len(items)
    by_kind: dict[str, float] = {}
    for event in prof.key_averages():
        if not event.key.startswith("ProfilerStep"):
            kind = kind_of(event.key)
            by_kind[kind] = by_kind.get(kind, 0.0) + event.self_cpu_time_total / 1000 / len(items)
    verbose = torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON)
    with _captured_stdout() as captured, verbose:
        one_pass()
    primitives = [p for p in parse_verbose("".join(captured)) if p.kind == "convolution"]
    return Split(
        dtype=dtype,
        items=len(items),
        wall_ms=statistics.median(walls),
        profiled_wall_ms=profiled_ms,
        conv_exec_ms=sum(p.ms for p in primitives) / len(items),
        conv_gflop=sum(p.gflop for p in primitives) / len(items),
        conv_implementations=sorted({p.implementation for p in primitives}),
        op_self_ms=dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
    )


def split_report(splits: Sequence[Split], peak: dict[str, float] | None) -> str:
    lines = []
    for s in splits:
        bound = 1000 / s.kernel_ms if s.kernel_ms else 0.0
        by_kind = s.op_self_ms.items()
        rest = s.profiled_wall_ms - sum(s.op_self_ms.values())
        lines += [
            f"{s.dtype}: {s.wall_ms:.1f} ms/item wall ({1000 / s.wall_ms:.2f} items/s), "
            f"{s.items} distinct items, batch 1",
            f"  convolution primitives (oneDNN exec): {s.conv_exec_ms:.1f} ms, "
            f"{s.conv_gflop:.1f} GFLOP, {s.conv_gflops:.0f} GFLOP/s "
            f"[{', '.join(s.conv_implementations)}]",
            *(f"  {kind:<28} {ms:7.1f} ms (profiler self time)" for kind, ms in by_kind),
            f"  {'outside the operators':<28} {rest:7.1f} ms (the profiled pass's "
            f"{s.profiled_wall_ms:.1f} ms minus the above)",
            f"  kernels only (conv exec + linear + attention): {s.kernel_ms:.1f} ms "
            f"-> at most {bound:.2f} items/s",
        ]
        if peak and s.dtype in peak:
            allows = peak[s.dtype] / GFLOP_PER_ITEM
            lines.append(
                f"  convolution peak {peak[s.dtype]:.0f} GFLOP/s allows {allows:.1f} items/s: "
                f"engine {1000 / s.wall_ms / allows:.2f} of it, kernels-only bound "
                f"{bound / allows:.2f}; the convolutions themselves run at "
                f"{s.conv_gflops / peak[s.dtype]:.2f} of the peak"
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
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
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
        splits = [measure_split(args.model_dir, d, args.passes) for d in dtypes]
        results["splits"] = [s.to_dict() for s in splits]
        texts.append(split_report(splits, peak))
    machine.report(results, "\n\n".join(texts), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
