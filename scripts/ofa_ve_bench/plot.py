"""The benchmark's PNG: server throughput and latency against concurrency, engine and
ModelScope as lines.

Why a separate module: matplotlib is only needed for the picture; nothing else of
the benchmark imports it.
"""

from __future__ import annotations

from pathlib import Path


def plot(results: dict[str, object], path: Path) -> Path:
    """Throughput and latency against concurrency, with (a) and (b) as lines (medians)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = results["summary"]
    points = [p for p in agg["server"] if p["mode"] == "concurrency"]
    xs = [p["level"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [p["throughput"] for p in points], "o-", label="Triton server (perf_analyzer)")
    if agg.get("engine_best"):
        best = agg["engine_best"]
        left.axhline(
            best["items_per_s"],
            color="tab:green",
            ls="--",
            label=f"engine, no server (batch {best['batch_size']})",
        )
    if agg.get("modelscope"):
        left.axhline(
            agg["modelscope"]["items_per_s"],
            color="tab:red",
            ls=":",
            label="ModelScope pipeline (1 per call)",
        )
    left.set(xscale="log", xlabel="concurrency (requests in flight)", ylabel="inferences/s")
    left.set_xticks(xs, [f"{x:g}" for x in xs])
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(xs, [p["p99_ms"] for p in points], "o-", color="tab:purple", label="p99")
    right.plot(xs, [p["p50_ms"] for p in points], "s--", color="tab:gray", label="p50")
    right.set(xscale="log", xlabel="concurrency (requests in flight)", ylabel="latency (ms)")
    right.set_xticks(xs, [f"{x:g}" for x in xs])
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(f"{results['title']} (medians of {agg['rounds']} rounds)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
