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
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ofa_ve_data import workload
from ofa_ve_ops import procfs
from ofa_ve_ops.paths import MODEL_NAME
from ofa_ve_ops.stub_watchdog import serving_stubs

from ofa_ve_bench.results import percentile
from ofa_ve_bench.traffic import Payload, check_loopback, send

MAX_BATCH_ITEMS = 32  # config.pbtxt max_batch_size
REQUEST_TIMEOUT_S = 120.0
RSS_SLACK_MIB = 16.0  # a process's RSS may grow by --max-rss-growth-pct or this, the larger
"""(short runs' noise); the /dev/shm regions may not grow at all."""


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


@dataclass
class Sample:
    """RSS (KiB) of tritonserver and each stub, and bytes the stubs' /dev/shm regions hold
    (touched pages), `t_s` into the run."""

    t_s: float
    requests: int
    rss_kib: dict[int, int]
    shm_bytes: int

    @classmethod
    def take(cls, server_pid: int, t_s: float, requests: int) -> Sample:
        rss, shm = {}, 0
        for pid in [server_pid, *stub_pids(server_pid)]:
            try:
                rss[pid] = procfs.vm_kib(pid, "VmRSS")
            except (FileNotFoundError, ProcessLookupError, KeyError):
                continue
        for stub in serving_stubs(server_pid).values():
            try:
                shm += os.stat(f"/dev/shm/{stub.shm_region}").st_blocks * 512
            except FileNotFoundError:
                continue
        return cls(round(t_s, 2), requests, rss, shm)


@dataclass
class SoakReport:
    config: dict
    server_pid: int
    stub_pids: list[int]
    requests: int = 0
    ok: int = 0
    expected_invalid: int = 0
    errors: int = 0
    error_messages: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    throughput_rps: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    rss_growth: dict[str, dict[str, float]] = field(default_factory=dict)
    shm_growth_mib: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def judge(self, warmup_s: float, max_rss_growth: float) -> None:
        """Medians of the first and the last third of the samples after warm-up: a leak moves
        the whole distribution; one large batch's activations only move the peak."""
        if self.errors:
            self.failures.append(f"{self.errors} unexpected errors: {self.error_messages}")
        if self.ok == 0:
            self.failures.append("no request succeeded")
        after = [s for s in self.samples if s.t_s >= warmup_s]
        if len(after) < 2:
            self.failures.append("too few samples after warm-up to judge memory")
            return
        third = max(1, len(after) // 3)
        head, tail = after[:third], after[-third:]
        for pid in after[0].rss_kib:
            if any(pid not in s.rss_kib for s in tail):
                self.failures.append(f"process {pid} disappeared during the soak")
                continue
            role = "tritonserver" if pid == self.server_pid else f"stub {pid}"
            base = statistics.median(s.rss_kib[pid] for s in head if pid in s.rss_kib)
            end = statistics.median(s.rss_kib[pid] for s in tail)
            growth = self.rss_growth[role] = {
                "after_warmup_mib": round(base / 1024, 1),
                "at_end_mib": round(end / 1024, 1),
                "peak_mib": round(max(s.rss_kib.get(pid, 0) for s in after) / 1024, 1),
                "growth_mib": round((end - base) / 1024, 1),
                "growth_pct": round(100.0 * (end - base) / base, 2),
            }
            allowed_kib = max(max_rss_growth * base, RSS_SLACK_MIB * 1024)
            if end - base > allowed_kib:
                self.failures.append(
                    f"{role} RSS grew {growth['growth_mib']} MiB ({growth['growth_pct']}%) "
                    f"after warm-up, over the allowed {allowed_kib / 1024:.1f} MiB"
                )
        self.shm_growth_mib = round((after[-1].shm_bytes - after[0].shm_bytes) / 2**20, 1)
        if self.shm_growth_mib > 0:
            self.failures.append(f"/dev/shm regions grew {self.shm_growth_mib} MiB after warm-up")


async def run_soak(args: argparse.Namespace, log: Callable[[str], None] = print) -> SoakReport:
    """Run one bounded soak (`main`'s arguments) and judge it; never raises for
    server-side failures."""
    import tritonclient.grpc.aio as aio

    port = int(args.url.rsplit(":", 1)[1])
    server_pid = args.server_pid or pid_listening_on(port)
    if server_pid is None:
        raise RuntimeError(f"no process of this user listens on port {port}; pass --server-pid")
    payloads = load_payloads(args.images_dir)
    config = {k: str(v) for k, v in vars(args).items()}
    report = SoakReport(config, server_pid, stub_pids(server_pid))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    sent = iter(range(10**12))

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
                payload = payloads[next(sent) % len(payloads)]
                report.requests += 1
                seconds, outcome, message, result = await send(
                    client, [payload], REQUEST_TIMEOUT_S
                )
                probs = result.as_numpy("PROBS") if result is not None else None
                if payload.hostile:
                    if outcome == "INVALID_ARGUMENT":
                        report.expected_invalid += 1
                    else:
                        errors[f"a hostile request was {outcome}: {message}"[:200]] += 1
                elif outcome != "answered":
                    errors[f"{outcome}: {message}"[:200]] += 1
                elif probs is None or probs.shape != (1, 3) or abs(float(probs.sum()) - 1) > 1e-3:
                    errors[f"malformed PROBS {probs!r}"[:200]] += 1
                else:
                    report.ok += 1
                    latencies.append(seconds)

        async def sampler() -> None:
            while True:
                sample = Sample.take(server_pid, time.monotonic() - started, report.requests)
                report.samples.append(sample)
                rss = ", ".join(f"{pid}={kib / 1024:.0f}MiB" for pid, kib in sample.rss_kib.items())
                log(
                    f"soak: t={sample.t_s:6.1f}s requests={sample.requests} ok={report.ok} "
                    f"errors={sum(errors.values())} rss[{rss}] "
                    f"shm={sample.shm_bytes / 2**20:.0f}MiB"
                )
                if time.monotonic() >= deadline:
                    return
                await asyncio.sleep(min(args.sample_interval_s, deadline - time.monotonic()))

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        await sampling
        report.samples.append(Sample.take(server_pid, time.monotonic() - started, report.requests))

    report.errors = sum(errors.values())
    report.error_messages = dict(errors.most_common(10))
    report.throughput_rps = round(report.ok / (time.monotonic() - started), 2)
    if latencies:
        quantiles = (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        report.latency_ms = {k: round(1000 * percentile(latencies, q), 1) for k, q in quantiles}
    report.judge(args.warmup_s, args.max_rss_growth)
    log(f"soak: {'PASSED' if report.passed else 'FAILED'} {'; '.join(report.failures)}")
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
    path = args.json
    try:
        report = asyncio.run(run_soak(args))
    except RuntimeError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    keys = ("requests", "ok", "expected_invalid", "errors", "throughput_rps", "latency_ms")
    keys += ("rss_growth", "shm_growth_mib")
    print(json.dumps({**{k: getattr(report, k) for k in keys}, "passed": report.passed}, indent=2))
    if path:
        path.write_text(json.dumps({**asdict(report), "passed": report.passed}, indent=2,
                                   default=str) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
