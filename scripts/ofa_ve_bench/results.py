"""Measurements and their arithmetic: per-call records, medians over rounds, ratios.

Why ratios within rounds: on a shared machine absolute numbers drift from minute to
minute, so (a), (b) and (c) are measured close together in each round and their
ratios are taken inside the round, then summarised (median, min, max) over rounds.
Pure functions on plain dicts: unit-tested on fixed numbers.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

RATIOS = (
    ("b/a", "engine", "modelscope"),
    ("c/a", "server", "modelscope"),
    ("c/b", "server", "engine"),
)
"""Ratio name, numerator, denominator: (a) ModelScope, (b) engine, (c) server."""


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
        row.update(
            items_per_s=round(self.items_per_s, 3),
            call_p50_ms=round(self.percentile(50), 1),
            call_p99_ms=round(self.percentile(99), 1),
            calls=len(self.latencies_ms),
        )
        return row


def ratio_summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-round ratios, rounded for the report."""
    return {
        "median": round(median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def _engine_rows(rounds: list[dict], size: int) -> list[dict]:
    return [e for r in rounds for e in r.get("engine", []) if e["batch_size"] == size]


def aggregate(rounds: list[dict[str, object]]) -> dict[str, object]:
    """Medians over rounds, and the ratios of each round (taken within the round)."""
    out: dict[str, object] = {"rounds": len(rounds)}
    ms = [r["modelscope"] for r in rounds if r.get("modelscope")]
    if ms:
        out["modelscope"] = {
            key: median([m[key] for m in ms])
            for key in ("items_per_s", "call_p50_ms", "call_p99_ms")
        }
    sizes = sorted({e["batch_size"] for r in rounds for e in r.get("engine", [])})
    engine = [
        {
            "batch_size": size,
            **{
                key: median([e[key] for e in _engine_rows(rounds, size)])
                for key in ("items_per_s", "call_p50_ms", "call_p99_ms")
            },
        }
        for size in sizes
    ]
    if engine:
        out["engine"] = engine
        out["engine_best"] = max(engine, key=lambda e: e["items_per_s"])
    levels = sorted(
        {(p["mode"], p["level"]) for r in rounds for p in r.get("server", [])},
        key=lambda k: (k[0] != "concurrency", k[1]),
    )
    server = []
    for mode, level in levels:
        pts = [
            p
            for r in rounds
            for p in r.get("server", [])
            if (p["mode"], p["level"]) == (mode, level)
        ]
        row: dict[str, object] = {"mode": mode, "level": level}
        for key in (
            "throughput",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "server_queue_ms",
            "server_compute_infer_ms",
            "avg_batch",
        ):
            row[key] = median([p[key] for p in pts])
        row["p99_ms_worst"] = max(p["p99_ms"] for p in pts)
        row["errors"] = sum(p["errors"] for p in pts)
        server.append(row)
    if server:
        out["server"] = server
        ok = [p for p in server if p["mode"] == "concurrency" and not p["errors"]]
        out["server_best"] = max(ok, key=lambda p: p["throughput"], default=None)

    best_size = (out.get("engine_best") or {}).get("batch_size")
    best_level = (out.get("server_best") or {}).get("level")
    per_round: dict[str, list[float]] = {name: [] for name, _, _ in RATIOS}
    for r in rounds:
        value = {
            "modelscope": (r.get("modelscope") or {}).get("items_per_s"),
            "engine": next(
                (e["items_per_s"] for e in r.get("engine", []) if e["batch_size"] == best_size),
                None,
            ),
            "server": next(
                (
                    p["throughput"]
                    for p in r.get("server", [])
                    if p["mode"] == "concurrency" and p["level"] == best_level and not p["errors"]
                ),
                None,
            ),
        }
        for name, num, den in RATIOS:
            if value[num] and value[den]:
                per_round[name].append(value[num] / value[den])
    out["ratios"] = {k: ratio_summary(v) for k, v in per_round.items() if v}
    out["p50_implied"] = p50_implied(out)
    return out


def p50_implied(agg: dict[str, object]) -> dict[str, object]:
    """Items/s implied by median latencies: batch / p50 per call, concurrency / p50.

    Why: on a shared machine other jobs come in bursts, and a burst during a timed
    window drags that window's throughput down; the median latency over the calls of
    all rounds shrugs such bursts off. (Little's law: in-flight / latency.)
    """
    ms = agg.get("modelscope")
    a = 1000.0 / ms["call_p50_ms"] if ms and ms["call_p50_ms"] else None
    engine = {
        e["batch_size"]: e["batch_size"] * 1000.0 / e["call_p50_ms"]
        for e in agg.get("engine", [])
        if e["call_p50_ms"]
    }
    server = {
        p["level"]: p["level"] * 1000.0 / p["p50_ms"]
        for p in agg.get("server", [])
        if p["mode"] == "concurrency" and p["p50_ms"] and not p["errors"]
    }
    b_size = max(engine, key=engine.get, default=None)
    c_level = max(server, key=server.get, default=None)
    b = engine.get(b_size)
    c = server.get(c_level)
    return {
        "modelscope": a,
        "engine": engine,
        "engine_best_batch": b_size,
        "server": server,
        "server_best_concurrency": c_level,
        "b/a": b / a if a and b else None,
        "c/a": c / a if a and c else None,
        "c/b": c / b if b and c else None,
    }
