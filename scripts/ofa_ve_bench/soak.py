#!/usr/bin/env python3
"""Sustained-load soak against a tritonserver on this machine: errors, memory, /dev/shm.

Why: leaks and slow failures (a growing stub, a shared-memory region that never shrinks,
one request in ten thousand failing) only show under minutes of steady traffic. This
drives the model at a fixed concurrency for a bounded time with the workload's photos and
texts plus a few hostile requests (they must fail INVALID_ARGUMENT and not leak either),
samples the RSS of tritonserver and its stubs and the stubs' /dev/shm regions, and fails
if a request failed unexpectedly or memory kept growing after the warm-up (the judgement:
docs/reliability.md). Loopback only; the server is found by its port (or --server-pid).

    python -m ofa_ve_bench.soak --duration 120 --concurrency 16 --json soak.json

Exit status 0 when every criterion holds, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ofa_ve_data import workload
from ofa_ve_ops import procfs
from ofa_ve_ops.paths import MODEL_NAME
from ofa_ve_ops.stub_watchdog import serving_stubs

from ofa_ve_bench import machine
from ofa_ve_bench.results import percentile
from ofa_ve_bench.traffic import Payload, check_loopback, send

MAX_BATCH_ITEMS = 32  # config.pbtxt max_batch_size
REQUEST_TIMEOUT_S = 120.0
RSS_SLACK_MIB = 16.0
"""A process's RSS may grow by `--max-rss-growth-pct` or by this, whichever is larger (short
runs' noise); the stubs' /dev/shm regions may not grow at all."""


def stub_pids(server_pid: int) -> list[int]:
    """The live model-instance stubs of one tritonserver."""
    return sorted(serving_stubs(server_pid))


def pid_listening_on(port: int) -> int | None:
    """The process listening on TCP `port`, if this user can see it."""
    inodes = {i for i, (_, p) in procfs.listening_sockets().items() if p == port}
    return next((pid for pid in procfs.pids() if procfs.socket_inodes(pid) & inodes), None)


def load_payloads(images_dir: Path, seed: int = 0) -> list[Payload]:
    """The workload's photos and texts (4 per image), shuffled, and 4 hostile requests
    spread evenly, the first early, so that even a short soak sends some."""
    images = workload.image_paths("all", images_dir)
    real = workload.items(4 * len(images), "all", seed=seed, images_dir=images_dir)
    valid = [Payload(image, h.encode(), p.encode()) for image, h, p in real]
    random.Random(seed).shuffle(valid)
    first = images[0].read_bytes()
    hostile = [
        Payload(b"", b"An empty file.", hostile=True),
        Payload(first[: len(first) // 2], b"A truncated file.", hostile=True),
        Payload(first, b"invalid \xff\xfe utf-8", hostile=True),
        Payload(first, b"   ", hostile=True),
    ]
    every = max(2, len(valid) // len(hostile))
    for n, payload in enumerate(hostile):
        valid.insert(min(len(valid), 3 + n * every), payload)
    return valid


def sample(server_pid: int, t_s: float, requests: int) -> dict[str, Any]:
    """RSS (KiB) of tritonserver and each stub, and the bytes the stubs' /dev/shm regions
    hold (touched pages), `t_s` into the run."""
    rss, shm = {}, 0
    for pid in [server_pid, *stub_pids(server_pid)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, KeyError):
            rss[pid] = procfs.vm_kib(pid, "VmRSS")
    for stub in serving_stubs(server_pid).values():
        with contextlib.suppress(FileNotFoundError):
            shm += os.stat(f"/dev/shm/{stub.shm_region}").st_blocks * 512
    return {"t_s": round(t_s, 2), "requests": requests, "rss_kib": rss, "shm_bytes": shm}


def judge_memory(samples: list[dict], server_pid: int, warmup_s: float, max_growth: float
                 ) -> tuple[dict[str, dict[str, float]], float, list[str]]:
    """Each process's RSS growth, the /dev/shm growth (MiB) and the failures: medians of the
    first and the last third of the samples after warm-up (a leak moves the whole
    distribution; one large batch's activations only move the peak)."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        return {}, 0.0, ["too few samples after warm-up to judge memory"]
    third = max(1, len(after) // 3)
    head, tail = after[:third], after[-third:]
    growth, failures = {}, []
    for pid in after[0]["rss_kib"]:
        if any(pid not in s["rss_kib"] for s in tail):
            failures.append(f"process {pid} disappeared during the soak")
            continue
        role = "tritonserver" if pid == server_pid else f"stub {pid}"
        base, end = (statistics.median(s["rss_kib"][pid] for s in part if pid in s["rss_kib"])
                     for part in (head, tail))
        row = growth[role] = {
            "after_warmup_mib": round(base / 1024, 1),
            "at_end_mib": round(end / 1024, 1),
            "peak_mib": round(max(s["rss_kib"].get(pid, 0) for s in after) / 1024, 1),
            "growth_mib": round((end - base) / 1024, 1),
            "growth_pct": round(100.0 * (end - base) / base, 2),
        }
        allowed_kib = max(max_growth * base, RSS_SLACK_MIB * 1024)
        if end - base > allowed_kib:
            failures.append(f"{role} RSS grew {row['growth_mib']} MiB ({row['growth_pct']}%) "
                            f"after warm-up, over the allowed {allowed_kib / 1024:.1f} MiB")
    shm = round((after[-1]["shm_bytes"] - after[0]["shm_bytes"]) / 2**20, 1)
    if shm > 0:
        failures.append(f"/dev/shm regions grew {shm} MiB after warm-up")
    return growth, shm, failures


async def run_soak(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Run one bounded soak (`main`'s arguments) and judge it: the report; never raises for
    server-side failures."""
    import tritonclient.grpc.aio as aio

    port = int(args.url.rsplit(":", 1)[1])
    server_pid = args.server_pid or pid_listening_on(port)
    if server_pid is None:
        raise RuntimeError(f"no process of this user listens on port {port}; pass --server-pid")
    payloads = load_payloads(args.images_dir)
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    samples: list[dict] = []
    stubs = stub_pids(server_pid)

    async with aio.InferenceServerClient(args.url) as client:
        if not await client.is_model_ready(MODEL_NAME):
            raise RuntimeError(f"model {MODEL_NAME} is not ready at {args.url}")
        # Priming: a request as large as the largest batch this soak can form, so the
        # stub's allocator meets its biggest activations before the clock starts.
        valid = [p for p in payloads if not p.hostile]
        await send(client, valid[: min(args.concurrency, MAX_BATCH_ITEMS)], REQUEST_TIMEOUT_S)
        started = time.monotonic()
        deadline = started + args.duration_s

        async def worker() -> None:
            while time.monotonic() < deadline:
                payload = payloads[counts["requests"] % len(payloads)]
                counts["requests"] += 1
                seconds, outcome, message, result = await send(
                    client, [payload], REQUEST_TIMEOUT_S
                )
                probs = result.as_numpy("PROBS") if result is not None else None
                if payload.hostile:
                    if outcome == "INVALID_ARGUMENT":
                        counts["expected_invalid"] += 1
                    else:
                        errors[f"a hostile request was {outcome}: {message}"[:200]] += 1
                elif outcome != "answered":
                    errors[f"{outcome}: {message}"[:200]] += 1
                elif probs is None or probs.shape != (1, 3) or abs(float(probs.sum()) - 1) > 1e-3:
                    errors[f"malformed PROBS {probs!r}"[:200]] += 1
                else:
                    counts["ok"] += 1
                    latencies.append(seconds)

        workers = asyncio.gather(*(worker() for _ in range(args.concurrency)))
        while True:  # a sample every interval, and one at the end
            now = sample(server_pid, time.monotonic() - started, counts["requests"])
            samples.append(now)
            rss = ", ".join(f"{pid}={kib / 1024:.0f}MiB" for pid, kib in now["rss_kib"].items())
            log(f"soak: t={now['t_s']:6.1f}s requests={now['requests']} ok={counts['ok']} "
                f"errors={sum(errors.values())} rss[{rss}] shm={now['shm_bytes'] / 2**20:.0f}MiB")
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(args.sample_interval_s, deadline - time.monotonic()))
        await workers
        samples.append(sample(server_pid, time.monotonic() - started, counts["requests"]))

    quantiles = (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)) if latencies else ()
    messages = dict(errors.most_common(10))
    failures = [f"{sum(errors.values())} unexpected errors: {messages}"] if errors else []
    failures += [] if counts["ok"] else ["no request succeeded"]
    growth, shm, memory = judge_memory(samples, server_pid, args.warmup_s, args.max_rss_growth)
    failures += memory
    report = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "server_pid": server_pid,
        "stub_pids": stubs,
        **{k: counts[k] for k in ("requests", "ok", "expected_invalid")},
        "errors": sum(errors.values()),
        "error_messages": messages,
        "latency_ms": {k: round(1000 * percentile(latencies, q), 1) for k, q in quantiles},
        "throughput_rps": round(counts["ok"] / (time.monotonic() - started), 2),
        "samples": samples,
        "rss_growth": growth,
        "shm_growth_mib": shm,
        "failures": failures,
        "passed": not failures,
    }
    log(f"soak: {'PASSED' if report['passed'] else 'FAILED'} {'; '.join(failures)}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--url", default="127.0.0.1:8001", help="gRPC HOST:PORT (loopback only)")
    add("--duration", dest="duration_s", type=float, default=600.0, metavar="S", help="(600)")
    add("--concurrency", type=int, default=8, help="requests in flight")
    add("--warmup", dest="warmup_s", type=float, metavar="S",
        help="before memory is baselined (default: a quarter of the run)")
    add("--sample-interval", dest="sample_interval_s", type=float, default=5.0, metavar="S")
    add("--server-pid", type=int, help="tritonserver PID (default: by port)")
    add("--images", dest="images_dir", type=Path, default=workload.IMAGES_DIR, metavar="DIR")
    add("--max-rss-growth-pct", dest="max_rss_growth", type=lambda pct: float(pct) / 100,
        default="5", metavar="PCT")
    add("--json", type=Path, help="write the full report here")
    args = parser.parse_args(argv)
    if args.warmup_s is None:
        args.warmup_s = 0.25 * args.duration_s
    try:
        check_loopback(args.url)
    except ValueError as e:
        parser.error(str(e))
    if args.duration_s <= 0 or args.concurrency < 1 or args.sample_interval_s <= 0:
        parser.error("duration, concurrency and sample interval must be positive")
    if not 0 <= args.warmup_s < args.duration_s:
        parser.error("warm-up must be shorter than the duration")
    try:
        report = asyncio.run(run_soak(args))
    except RuntimeError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    keys = ("requests", "ok", "expected_invalid", "errors", "throughput_rps", "latency_ms")
    keys += ("rss_growth", "shm_growth_mib", "passed")
    machine.report(report, json.dumps({k: report[k] for k in keys}, indent=2), args.json)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
