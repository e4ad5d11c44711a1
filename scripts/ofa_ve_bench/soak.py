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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ofa_ve_data import workload
from ofa_ve_ops import procfs
from ofa_ve_ops.paths import MODEL_NAME
from ofa_ve_ops.stub_watchdog import serving_stubs

from ofa_ve_bench.results import percentile
from ofa_ve_bench.traffic import Payload, check_loopback, send

MAX_BATCH_ITEMS = 32  # config.pbtxt max_batch_size


def stub_pids(server_pid: int) -> list[int]:
    """The live model-instance stubs of one tritonserver."""
    return sorted(serving_stubs(server_pid))


def pid_listening_on(port: int) -> int | None:
    """The process listening on TCP `port`, if this user can see it."""
    inodes = {i for i, (_, p) in procfs.listening_sockets().items() if p == port}
    return next((pid for pid in procfs.pids() if procfs.socket_inodes(pid) & inodes), None)


def shm_bytes(server_pid: int) -> int:
    """Bytes held (touched pages) by the /dev/shm regions of the server's stubs."""
    held = 0
    for stub in serving_stubs(server_pid).values():
        try:
            held += os.stat(f"/dev/shm/{stub.shm_region}").st_blocks * 512
        except FileNotFoundError:
            continue
    return held


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
class SoakConfig:
    url: str = "127.0.0.1:8001"
    duration_s: float = 600.0
    concurrency: int = 8
    warmup_s: float | None = None  # memory is judged after it (default: a quarter of the run)
    sample_interval_s: float = 5.0
    server_pid: int | None = None
    images_dir: Path = workload.IMAGES_DIR
    request_timeout_s: float = 120.0
    max_rss_growth: float = 0.05  # a process's RSS may grow by this fraction after warm-up,
    rss_slack_mib: float = 16.0  # or this many MiB, whichever is larger (short runs' noise)
    max_shm_growth_mib: float = 0.0

    def __post_init__(self) -> None:
        check_loopback(self.url)
        if self.duration_s <= 0 or self.concurrency < 1 or self.sample_interval_s <= 0:
            raise ValueError("duration, concurrency and sample interval must be positive")
        if self.warmup_s is None:
            self.warmup_s = 0.25 * self.duration_s
        if not 0 <= self.warmup_s < self.duration_s:
            raise ValueError("warm-up must be shorter than the duration")


@dataclass
class Sample:
    t_s: float
    requests: int
    rss_kib: dict[int, int]
    shm_bytes: int


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

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2, default=str)


def _sample(server_pid: int, started: float, requests: int) -> Sample:
    rss = {}
    for pid in [server_pid, *stub_pids(server_pid)]:
        try:
            rss[pid] = procfs.vm_kib(pid, "VmRSS")
        except (FileNotFoundError, ProcessLookupError, KeyError):
            continue
    return Sample(round(time.monotonic() - started, 2), requests, rss, shm_bytes(server_pid))


def _judge(report: SoakReport, cfg: SoakConfig) -> None:
    """Medians of the first and the last third of the samples after warm-up: a leak moves
    the whole distribution; one large batch's activations only move the peak."""
    if report.errors:
        report.failures.append(f"{report.errors} unexpected errors: {report.error_messages}")
    if report.ok == 0:
        report.failures.append("no request succeeded")
    after = [s for s in report.samples if s.t_s >= cfg.warmup_s]
    if len(after) < 2:
        report.failures.append("too few samples after warm-up to judge memory")
        return
    third = max(1, len(after) // 3)
    head, tail = after[:third], after[-third:]
    for pid in after[0].rss_kib:
        if any(pid not in s.rss_kib for s in tail):
            report.failures.append(f"process {pid} disappeared during the soak")
            continue
        role = "tritonserver" if pid == report.server_pid else f"stub {pid}"
        base = statistics.median(s.rss_kib[pid] for s in head if pid in s.rss_kib)
        end = statistics.median(s.rss_kib[pid] for s in tail)
        growth = report.rss_growth[role] = {
            "after_warmup_mib": round(base / 1024, 1),
            "at_end_mib": round(end / 1024, 1),
            "peak_mib": round(max(s.rss_kib.get(pid, 0) for s in after) / 1024, 1),
            "growth_mib": round((end - base) / 1024, 1),
            "growth_pct": round(100.0 * (end - base) / base, 2),
        }
        allowed_kib = max(cfg.max_rss_growth * base, cfg.rss_slack_mib * 1024)
        if end - base > allowed_kib:
            report.failures.append(
                f"{role} RSS grew {growth['growth_mib']} MiB ({growth['growth_pct']}%) "
                f"after warm-up, over the allowed {allowed_kib / 1024:.1f} MiB"
            )
    report.shm_growth_mib = round((after[-1].shm_bytes - after[0].shm_bytes) / 2**20, 1)
    if report.shm_growth_mib > cfg.max_shm_growth_mib:
        report.failures.append(f"/dev/shm regions grew {report.shm_growth_mib} MiB after warm-up")


async def run_soak(cfg: SoakConfig, log=print) -> SoakReport:
    """Run one bounded soak and judge it; never raises for server-side failures."""
    import tritonclient.grpc.aio as aio

    port = int(cfg.url.rsplit(":", 1)[1])
    server_pid = cfg.server_pid or pid_listening_on(port)
    if server_pid is None:
        raise RuntimeError(f"no process of this user listens on port {port}; pass --server-pid")
    payloads = load_payloads(cfg.images_dir)
    config = {k: str(v) for k, v in asdict(cfg).items()}
    report = SoakReport(config, server_pid, stub_pids(server_pid))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    sent = iter(range(10**12))

    async with aio.InferenceServerClient(cfg.url) as client:
        if not await client.is_model_ready(MODEL_NAME):
            raise RuntimeError(f"model {MODEL_NAME} is not ready at {cfg.url}")
        # Priming: a request as large as the largest batch this soak can form, so the
        # stub's allocator meets its biggest activations before the clock starts.
        valid = [p for p in payloads if not p.hostile]
        await send(client, valid[: min(cfg.concurrency, MAX_BATCH_ITEMS)], cfg.request_timeout_s)
        started = time.monotonic()
        deadline = started + cfg.duration_s

        async def worker() -> None:
            while time.monotonic() < deadline:
                payload = payloads[next(sent) % len(payloads)]
                report.requests += 1
                seconds, outcome, message, result = await send(
                    client, [payload], cfg.request_timeout_s
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
                sample = _sample(server_pid, started, report.requests)
                report.samples.append(sample)
                rss = ", ".join(f"{pid}={kib / 1024:.0f}MiB" for pid, kib in sample.rss_kib.items())
                log(
                    f"soak: t={sample.t_s:6.1f}s requests={sample.requests} ok={report.ok} "
                    f"errors={sum(errors.values())} rss[{rss}] "
                    f"shm={sample.shm_bytes / 2**20:.0f}MiB"
                )
                if time.monotonic() >= deadline:
                    return
                await asyncio.sleep(min(cfg.sample_interval_s, deadline - time.monotonic()))

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        await sampling
        report.samples.append(_sample(server_pid, started, report.requests))

    report.errors = sum(errors.values())
    report.error_messages = dict(errors.most_common(10))
    report.throughput_rps = round(report.ok / (time.monotonic() - started), 2)
    if latencies:
        quantiles = (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        report.latency_ms = {k: round(1000 * percentile(latencies, q), 1) for k, q in quantiles}
    _judge(report, cfg)
    log(f"soak: {'PASSED' if report.passed else 'FAILED'} {'; '.join(report.failures)}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--url", default="127.0.0.1:8001", help="gRPC HOST:PORT (loopback only)")
    add("--duration", dest="duration_s", type=float, default=600.0, metavar="S", help="(600)")
    add("--concurrency", type=int, default=8, help="requests in flight")
    add("--warmup", dest="warmup_s", type=float, metavar="S", help="before memory is baselined")
    add("--sample-interval", dest="sample_interval_s", type=float, default=5.0, metavar="S")
    add("--server-pid", type=int, help="tritonserver PID (default: by port)")
    add("--images", dest="images_dir", type=Path, default=workload.IMAGES_DIR, metavar="DIR")
    add("--max-rss-growth-pct", dest="max_rss_growth", type=lambda pct: float(pct) / 100,
        default="5", metavar="PCT")
    add("--json", type=Path, help="write the full report here")
    args = vars(parser.parse_args(argv))
    path = args.pop("json")
    try:
        cfg = SoakConfig(**args)
    except ValueError as e:
        parser.error(str(e))
    try:
        report = asyncio.run(run_soak(cfg))
    except RuntimeError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    keys = ("requests", "ok", "expected_invalid", "errors", "throughput_rps", "latency_ms")
    keys += ("rss_growth", "shm_growth_mib")
    print(json.dumps({**{k: getattr(report, k) for k in keys}, "passed": report.passed}, indent=2))
    if path:
        path.write_text(report.to_json() + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
