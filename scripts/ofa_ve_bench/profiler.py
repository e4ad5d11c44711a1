"""Where one engine item's time goes: the kernels, the other operators, the rest.

Why: "the engine runs N items/s" says little about what to speed up. One item's wall time
(distinct JPEGs, batch 1, as a CPU instance runs them) is split into the convolution
primitives' own exec time (oneDNN's verbose mode), torch.profiler's self time of the
other operators by kind, and the time outside them (preparing, Python, dispatch); the kernels
alone bound the items/s that any amount of work around them could reach.

    .venv/bin/python -m ofa_ve_bench.profiler --model-dir DIR [--precisions float32,bfloat16,int8]
        [--passes 3] [--threads N] [--json out.json]
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ofa_ve_bench import machine
from ofa_ve_bench.results import listed, timed

PRECISIONS = ("float32", "bfloat16", "int8")  # int8: quantization int8 (engine_runner)
KINDS = (  # torch.profiler operator names -> the kind of work (first match wins)
    # the graph stem's fused partitions, and the int8 stem's quantized::conv2d(_relu)
    ("convolution", ("convolution", "LlgaPartition", "quantized::conv")),
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


def measure_split(model_dir: Path, precision: str, passes: int, count: int | None = None) -> dict:
    """One engine in `precision`, ms per item: `wall_ms` (median of timed passes, nothing
    watching), `profiled_wall_ms` (a pass under torch.profiler: what the split adds up to),
    `op_self_ms` (its self time by kind), `conv_exec_ms` and `conv_gflop` (a pass in
    oneDNN's verbose mode), the kernels-only bound."""
    import torch
    from ofa_ve_data import workload
    from torch.profiler import ProfilerActivity, profile

    from ofa_ve_bench.engine_runner import load_engine, prepare_all

    engine = load_engine(model_dir, "cpu", precision, 1)
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
        "precision": precision,
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


def split_report(splits: Sequence[dict]) -> str:
    lines = []
    for s in splits:
        rest = s["profiled_wall_ms"] - sum(s["op_self_ms"].values())
        lines += [
            f"{s['precision']}: {s['wall_ms']:.1f} ms/item wall "
            f"({1000 / s['wall_ms']:.2f} items/s), {s['items']} distinct items, batch 1",
            f"  convolution primitives (oneDNN exec): {s['conv_exec_ms']:.1f} ms, "
            f"{s['conv_gflop']:.1f} GFLOP, {s['conv_gflops']:.0f} GFLOP/s "
            f"[{', '.join(s['conv_implementations'])}]",
            *(f"  {k:<28} {ms:7.1f} ms (profiler self time)" for k, ms in s["op_self_ms"].items()),
            f"  {'outside the operators':<28} {rest:7.1f} ms (the profiled pass's "
            f"{s['profiled_wall_ms']:.1f} ms minus the above)",
            f"  kernels only (conv exec + linear + attention): {s['kernel_ms']:.1f} ms "
            f"-> at most {s['kernel_bound_items_per_s']:.2f} items/s",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model-dir", type=Path, required=True, help="ModelScope model dir")
    add("--precisions", "--dtypes", dest="precisions", default="float32,bfloat16",
        help=f"comma-separated, of {', '.join(PRECISIONS)}")
    add("--passes", type=int, default=3, help="timed passes over the items")
    add("--threads", type=int, help="torch threads (default: torch's)")
    add("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    precisions = listed(args.precisions)
    if not precisions or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precisions: each one of {', '.join(PRECISIONS)}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    splits = [measure_split(args.model_dir, p, args.passes) for p in precisions]
    results = {"machine": machine.describe().to_dict(), "splits": splits}
    machine.report(results, split_report(splits), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
