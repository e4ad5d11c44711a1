"""Where one engine item's time goes, kernel by kernel, and what the kernels alone allow.

Why: a target like "the engine at 0.5 of what the convolutions allow" is only
reachable if the kernels the engine calls run that fast at the engine's own shapes.
This runs the engine on distinct photos (the JPEG workload, one item per pass, as
the server's CPU instance does) and splits an item's wall time into:

- the oneDNN convolution primitives' own execution time (oneDNN's verbose mode
  reports each primitive's exec time; the ResNet stem is all convolutions), with
  the GFLOP they do (from each primitive's shape), hence their own GFLOP/s;
- torch.profiler's self time of the other operators by kind (linear, attention,
  norms, elementwise);
- the rest: Python, dispatch, allocation and what the profiler cannot see.

It reports the kernels-only bound (items/s if everything but the convolution,
linear and attention kernels were free) and, with the convolution peak measured
beside it (`cpu_peak`), the fraction of that peak the engine and the bound reach
at 38.5 GFLOP per item.

    .venv/bin/python -m ofa_ve_bench.kernel_time --model-dir DIR [--dtypes float32,bfloat16]
        [--passes 3] [--peak-seconds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ofa_ve_bench import cpu_peak, machine, workload
from ofa_ve_bench.engine_runner import build_engine, prepare_all

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
    """One dtype's item, per item (ms) and what that bounds."""

    dtype: str
    items: int
    wall_ms: float
    """Median over passes of the wall time per item, no profiler or verbose mode on."""
    profiled_wall_ms: float
    """The wall time per item of the pass under the profiler (what its split adds up to)."""
    conv_exec_ms: float
    """oneDNN's own execution time of the convolution primitives."""
    conv_gflop: float
    conv_implementations: list[str]
    op_self_ms: dict[str, float] = field(default_factory=dict)
    """torch.profiler's self time by kind (its convolution figure includes the op's
    own overhead around the primitive)."""

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


def measure(model_dir: Path, dtype: str, passes: int, count: int | None = None) -> Split:
    """One engine in `dtype`: timed passes over the items, then one pass under the
    profiler and one in oneDNN's verbose mode."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    engine = build_engine(model_dir, "cpu", {"dtype": dtype}, forward_batch_size=1)[0]
    items = workload.items(formats="jpeg", seed=0)[:count]

    def one_pass() -> None:
        for item in items:
            engine.predict(prepare_all(engine, [item]))

    one_pass()  # warm-up: every text length and image once (oneDNN caches its kernels)
    walls = []
    for _ in range(passes):
        started = time.perf_counter()
        one_pass()
        walls.append((time.perf_counter() - started) * 1000 / len(items))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        one_pass()
        profiled_ms = (time.perf_counter() - started) * 1000 / len(items)
    by_kind: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("ProfilerStep"):
            continue
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


def text_report(splits: Sequence[Split], peak: dict[str, float] | None) -> str:
    lines = []
    for s in splits:
        lines.append(
            f"{s.dtype}: {s.wall_ms:.1f} ms/item wall ({1000 / s.wall_ms:.2f} items/s), "
            f"{s.items} distinct items, batch 1"
        )
        lines.append(
            f"  convolution primitives (oneDNN exec): {s.conv_exec_ms:.1f} ms, "
            f"{s.conv_gflop:.1f} GFLOP, {s.conv_gflops:.0f} GFLOP/s "
            f"[{', '.join(s.conv_implementations)}]"
        )
        for kind, ms in s.op_self_ms.items():
            lines.append(f"  {kind:<28} {ms:7.1f} ms (profiler self time)")
        rest = s.profiled_wall_ms - sum(s.op_self_ms.values())
        lines.append(
            f"  {'outside the operators':<28} {rest:7.1f} ms (the profiled pass's "
            f"{s.profiled_wall_ms:.1f} ms minus the above)"
        )
        bound = 1000 / s.kernel_ms if s.kernel_ms else 0.0
        lines.append(
            f"  kernels only (conv exec + linear + attention): {s.kernel_ms:.1f} ms "
            f"-> at most {bound:.2f} items/s"
        )
        if peak and s.dtype in peak:
            allows = peak[s.dtype] / cpu_peak.GFLOP_PER_ITEM
            lines.append(
                f"  convolution peak {peak[s.dtype]:.0f} GFLOP/s allows {allows:.1f} items/s: "
                f"engine {1000 / s.wall_ms / allows:.2f} of it, kernels-only bound "
                f"{bound / allows:.2f}; the convolutions themselves run at "
                f"{s.conv_gflops / peak[s.dtype]:.2f} of the peak"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the items")
    parser.add_argument(
        "--peak-seconds",
        type=float,
        default=2.0,
        help="seconds per shape for the convolution peak measured beside it (0: skip)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or any(d not in cpu_peak.DTYPES for d in dtypes):
        parser.error(f"--dtypes: each one of {', '.join(cpu_peak.DTYPES)}")
    splits = [measure(args.model_dir, d, args.passes) for d in dtypes]
    peak = None
    if args.peak_seconds > 0:
        peak = cpu_peak.conv_peak(cpu_peak.measure(args.peak_seconds))
    results: dict[str, Any] = {
        "machine": machine.describe().to_dict(),
        "splits": [s.to_dict() for s in splits],
        "conv_peak_gflops": peak,
        "gflop_per_item": cpu_peak.GFLOP_PER_ITEM,
    }
    machine.report(results, text_report(splits, peak), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
