"""The benchmark's Markdown: the three measurements, their ratios, latency, start-up, memory.

Why apart from the measuring: the report is a pure function of the results JSON, so
it can be unit-tested on fixed numbers and re-rendered from a saved results.json.
"""

from __future__ import annotations


def _ratio_text(ratios: dict[str, dict[str, float]], key: str) -> str:
    r = ratios.get(key)
    if not r:
        return "-"
    return f"{r['median']:.2f}x (rounds: {r['min']:.2f}-{r['max']:.2f})"


def report(results: dict[str, object]) -> str:
    """Markdown: the three measurements, their ratios, latency, start-up and memory."""
    agg = results["summary"]
    ms, best = agg.get("modelscope"), agg.get("engine_best")
    loads = [r["load_before"] for r in results["rounds"]]
    lines = [
        f"### {results['title']}",
        "",
        f"Medians of {agg['rounds']} rounds; each round measures (a), (b), (c) in turn. "
        f"Load average at the start of each round: {', '.join(f'{x:.1f}' for x in loads)}.",
        "",
        "| what | items/s | latency |",
        "| --- | ---: | --- |",
    ]
    if ms:
        lines.append(
            f"| (a) ModelScope pipeline, 1 per call | {ms['items_per_s']:.2f} | per call p50 "
            f"{ms['call_p50_ms']:.0f} ms, p99 {ms['call_p99_ms']:.0f} ms |"
        )
    for e in agg.get("engine", []):
        mark = " (best)" if best and e["batch_size"] == best["batch_size"] else ""
        lines.append(
            f"| (b) engine, batch {e['batch_size']}{mark} | {e['items_per_s']:.2f} | per call "
            f"p50 {e['call_p50_ms']:.0f} ms, p99 {e['call_p99_ms']:.0f} ms |"
        )
    for p in agg.get("server", []):
        what = f"c={p['level']:g}" if p["mode"] == "concurrency" else f"{p['level']:g} req/s"
        lines.append(
            f"| (c) Triton, {what} | {p['throughput']:.2f} | p50 {p['p50_ms']:.0f} ms, p99 "
            f"{p['p99_ms']:.0f} ms (worst round {p['p99_ms_worst']:.0f}), queue "
            f"{p['server_queue_ms']:.0f} ms, compute {p['server_compute_infer_ms']:.0f} ms, "
            f"avg batch {p['avg_batch']:.1f}, errors {p['errors']} |"
        )
    ratios = agg.get("ratios", {})
    lines += ["", "| ratio (within each round, then the median) | value |", "| --- | ---: |"]
    lines.append(f"| (b)/(a) engine best / ModelScope | {_ratio_text(ratios, 'b/a')} |")
    lines.append(f"| (c)/(a) server best / ModelScope | {_ratio_text(ratios, 'c/a')} |")
    lines.append(f"| (c)/(b) server best / engine best | {_ratio_text(ratios, 'c/b')} |")
    implied = agg.get("p50_implied") or {}
    if implied.get("b/a") or implied.get("c/a"):

        def fmt(x: float | None) -> str:
            return f"{x:.2f}x" if x else "-"

        lines.append(
            f"| same, from median latencies (batch or concurrency / p50): (b)/(a), (c)/(a), "
            f"(c)/(b) | {fmt(implied.get('b/a'))}, {fmt(implied.get('c/a'))}, "
            f"{fmt(implied.get('c/b'))} |"
        )
    server_best = agg.get("server_best")
    if server_best:
        lines.append(
            f"| server best at | c={server_best['level']:g}: p99 {server_best['p99_ms']:.0f} ms |"
        )
    one = next((e for e in agg.get("engine", []) if e["batch_size"] == 1), None)
    c1 = next(
        (p for p in agg.get("server", []) if p["mode"] == "concurrency" and p["level"] == 1),
        None,
    )
    if one and c1:
        lines.append(
            f"| p50 at c=1 minus one engine call (batch 1, p50) | "
            f"{c1['p50_ms'] - one['call_p50_ms']:+.1f} ms |"
        )
    server = results.get("server")
    if server:
        mem = server["memory"]
        procs = ", ".join(
            f"{p['process']} {p['peak_rss_mib']:.0f} MiB"
            + (f" (GPU {p['gpu_mib']} MiB)" if "gpu_mib" in p else "")
            for p in mem["processes"]
        )
        lines += [
            "",
            f"- cold start to READY: {server['cold_start_to_ready_s']:.1f} s "
            f"(load avg {server['load_before_start']:.1f})",
            f"- peak RSS: {mem['peak_rss_total_mib']:.0f} MiB in all ({procs})",
        ]
    if results.get("engine_settings"):
        lines.append(f"- engine settings: {results['engine_settings']}")
    if results.get("engine_options_dropped"):
        dropped = ", ".join(results["engine_options_dropped"])
        lines.append(f"- not taken by this engine's loader (server only): {dropped}")
    lines.append(f"- machine: {results['machine']}")
    lines.append(f"- command: `{results['command']}`")
    return "\n".join(lines)
