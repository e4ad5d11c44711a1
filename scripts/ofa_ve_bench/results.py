"""The tools' figures: the one timing loop, answers against a reference, Markdown tables,
and the benchmark's medians over rounds, ratios within rounds and report.

Why ratios within rounds: on a shared machine absolute numbers drift from minute to
minute, so (a) ModelScope, (b) the engine and (c) the server are measured close together
in each round, their ratios taken inside the round, then summarised over rounds. All
but `timed` are pure functions of plain values (unit-tested on fixed numbers; a saved
results.json renders again).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ofa_ve_bench.machine import load_average

RATIOS = (("b/a", "engine", "modelscope"), ("c/a", "server", "modelscope"),
          ("c/b", "server", "engine"))
"""Ratio name, numerator, denominator: (a) ModelScope, (b) engine, (c) server."""
CALL_KEYS = ("items_per_s", "call_p50_ms", "call_p99_ms")
SERVER_KEYS = ("throughput", "p50_ms", "p95_ms", "p99_ms", "server_queue_ms", "server_compute_ms",
               "avg_batch")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile `q` (0-100) of `values`; 0.0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median(values: Sequence[float]) -> float:
    """The median, 0.0 for no values (a measurement that did not run)."""
    return statistics.median(values) if values else 0.0


@dataclass
class Throughput:
    """One timed window: `items` done in `seconds`, with each call's latency."""

    name: str
    batch_size: int
    items: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    load_before: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict[str, object]:
        row = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        return {**row, "items_per_s": round(self.items_per_s, 3),
                "call_p50_ms": round(self.percentile(50), 1),
                "call_p99_ms": round(self.percentile(99), 1), "calls": len(self.latencies_ms)}


def timed(name: str, batch_size: int, call: Callable[[int], object], seconds: float,
          min_calls: int = 1, warmup: int = 0) -> Throughput:
    """`call(n)` for n = 0, 1, ...: the first `warmup` calls untimed (kernels, threads,
    caches), then timed calls until `seconds` have passed and `min_calls` were made, each
    of `batch_size` items: the one timing loop of every tool."""
    for n in range(warmup):
        call(n)
    result = Throughput(name, batch_size, 0, 0.0, load_before=load_average())
    start = time.perf_counter()
    while result.seconds < seconds or len(result.latencies_ms) < min_calls:
        t0 = time.perf_counter()
        call(warmup + len(result.latencies_ms))
        result.latencies_ms.append((time.perf_counter() - t0) * 1000)
        result.items += batch_size
        result.seconds = time.perf_counter() - start
    return result


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, object]:
    """Label agreement and probability differences of `other` against `reference` ([N, 3]
    each); each flip with its reference margin (top minus runner-up): a flip on a near-tie
    means little, one on a clear answer a lot."""
    if reference.shape != other.shape:
        raise ValueError(f"shapes differ: {reference.shape} and {other.shape}")
    ref_labels, labels = reference.argmax(1), other.argmax(1)
    ordered = np.sort(reference, axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    diff = np.abs(reference.astype(np.float64) - other).max(axis=1)
    flips = np.flatnonzero(ref_labels != labels)
    clear = margins > 0.05
    return {
        "pairs": len(reference),
        "label_agreement": round(float((ref_labels == labels).mean()), 5),
        "max_prob_diff": float(diff.max()),
        "mean_prob_diff": float(diff.mean()),
        "flips": len(flips),
        "flip_margins_fp32": [round(float(margins[i]), 5) for i in flips],
        "pairs_with_margin_over_0.05": int(clear.sum()),
        "agreement_margin_over_0.05": (
            round(float((ref_labels[clear] == labels[clear]).mean()), 5) if clear.any() else None
        ),
        "median_fp32_margin": round(float(np.median(margins)), 5),
    }


def listed(text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    """A comma-separated option: `"1, 2,4"` -> [1, 2, 4] of `kind` (empty parts skipped)."""
    return [kind(part.strip()) for part in text.split(",") if part.strip()]


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines; a column named with a trailing ":" is right-aligned."""
    head = [c.rstrip(":") for c in columns]
    rule = ["---:" if c.endswith(":") else "---" for c in columns]
    return ["| " + " | ".join(map(str, row)) + " |" for row in (head, rule, *rows)]


def ratio_summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-round ratios, rounded for the report."""
    return {k: round(f(values), 3) for k, f in (("median", median), ("min", min), ("max", max))}


def aggregate(rounds: list[dict]) -> dict[str, object]:
    """Medians over rounds, the best of (b) and (c), and the ratios of each round."""
    out: dict[str, object] = {"rounds": len(rounds)}
    ms = [r["modelscope"] for r in rounds if r.get("modelscope")]
    if ms:
        out["modelscope"] = {k: median([m[k] for m in ms]) for k in CALL_KEYS}
    engine: dict[int, list[dict]] = {}
    for e in (e for r in rounds for e in r.get("engine", [])):
        engine.setdefault(e["batch_size"], []).append(e)
    if engine:
        out["engine"] = [
            {"batch_size": size, **{k: median([e[k] for e in rows]) for k in CALL_KEYS}}
            for size, rows in sorted(engine.items())
        ]
        out["engine_best"] = max(out["engine"], key=lambda e: e["items_per_s"])
    server: dict[tuple, list[dict]] = {}
    for p in (p for r in rounds for p in r.get("server", [])):
        server.setdefault((p["mode"] != "concurrency", p["level"], p["mode"]), []).append(p)
    if server:
        out["server"] = [
            {"mode": mode, "level": level, **{k: median([p[k] for p in pts]) for k in SERVER_KEYS},
             "p99_ms_worst": max(p["p99_ms"] for p in pts),
             "errors": sum(p["errors"] for p in pts)}
            for (_, level, mode), pts in sorted(server.items())
        ]
        ok = [p for p in out["server"] if p["mode"] == "concurrency" and not p["errors"]]
        out["server_best"] = max(ok, key=lambda p: p["throughput"], default=None)

    best_size = (out.get("engine_best") or {}).get("batch_size")
    best_level = (out.get("server_best") or {}).get("level")
    per_round: dict[str, list[float]] = {name: [] for name, _, _ in RATIOS}
    for r in rounds:
        value = {
            "modelscope": (r.get("modelscope") or {}).get("items_per_s"),
            "engine": next((e["items_per_s"] for e in r.get("engine", [])
                            if e["batch_size"] == best_size), None),
            "server": next((p["throughput"] for p in r.get("server", [])
                            if p["mode"] == "concurrency" and p["level"] == best_level
                            and not p["errors"]), None),
        }
        for name, num, den in RATIOS:
            if value[num] and value[den]:
                per_round[name].append(value[num] / value[den])
    out["ratios"] = {k: ratio_summary(v) for k, v in per_round.items() if v}
    return out


def load_name(mode: str, level: float) -> str:
    """A sweep level as the tables name it: `c=4` (concurrency) or `2 req/s` (request rate)."""
    return f"c={level:g}" if mode == "concurrency" else f"{level:g} req/s"


def report(results: dict[str, object]) -> str:
    """Markdown: the three measurements, their ratios, latency, start-up and memory."""
    agg = results["summary"]
    ms, best, ratios = agg.get("modelscope"), agg.get("engine_best"), agg.get("ratios", {})
    engine, server = agg.get("engine", []), agg.get("server", [])
    loads = ", ".join(f"{r['load_before']:.1f}" for r in results["rounds"])

    calls = [("(a) ModelScope pipeline, 1 per call", ms)] if ms else []
    calls += [(f"(b) engine, batch {e['batch_size']}"
               + (" (best)" if best and e["batch_size"] == best["batch_size"] else ""), e)
              for e in engine]
    rows = [(what, f"{r['items_per_s']:.2f}",
             f"per call p50 {r['call_p50_ms']:.0f} ms, p99 {r['call_p99_ms']:.0f} ms")
            for what, r in calls]
    for p in server:
        rows.append((
            f"(c) Triton, {load_name(p['mode'], p['level'])}", f"{p['throughput']:.2f}",
            f"p50 {p['p50_ms']:.0f} ms, p99 {p['p99_ms']:.0f} ms (worst round "
            f"{p['p99_ms_worst']:.0f}), queue {p['server_queue_ms']:.0f} ms, compute "
            f"{p['server_compute_ms']:.0f} ms, avg batch {p['avg_batch']:.1f}, errors "
            f"{p['errors']}"))
    ratio_rows = []
    for key, what in (("b/a", "engine best / ModelScope"), ("c/a", "server best / ModelScope"),
                      ("c/b", "server best / engine best")):
        r = ratios.get(key)
        value = f"{r['median']:.2f}x (rounds: {r['min']:.2f}-{r['max']:.2f})" if r else "-"
        ratio_rows.append((f"({key[0]})/({key[2]}) {what}", value))
    one = next((e for e in engine if e["batch_size"] == 1), None)
    c1 = next((p for p in server if p["mode"] == "concurrency" and p["level"] == 1), None)
    if one and c1:
        ratio_rows.append(("p50 at c=1 minus one engine call (batch 1, p50)",
                           f"{c1['p50_ms'] - one['call_p50_ms']:+.1f} ms"))
    lines = [
        f"### {results['title']}",
        "",
        f"Medians of {agg['rounds']} rounds; each round measures (a), (b), (c) in turn. "
        f"Load average at the start of each round: {loads}.",
        "",
        *markdown_table(("what", "items/s:", "latency"), rows),
        "",
        *markdown_table(("ratio (within each round, then the median)", "value:"), ratio_rows),
    ]
    facts = results.get("server")
    if facts:
        mem = facts["memory"]
        procs = ", ".join(
            f"{p['process']} {p['peak_rss_mib']:.0f} MiB"
            + (f" (GPU {p['gpu_mib']} MiB)" if "gpu_mib" in p else "")
            for p in mem["processes"]
        )
        lines += [
            "",
            f"- cold start to READY: {facts['cold_start_to_ready_s']:.1f} s "
            f"(load avg {facts['load_before_start']:.1f})",
            f"- peak RSS: {mem['peak_rss_total_mib']:.0f} MiB in all ({procs})",
        ]
    if results.get("engine_settings"):
        lines.append(f"- engine settings: {results['engine_settings']}")
    lines += [f"- machine: {results['machine']}", f"- command: `{results['command']}`"]
    return "\n".join(lines)
