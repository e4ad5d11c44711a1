#!/usr/bin/env python3
"""Sustained-load soak against a tritonserver on this machine: errors, memory, /dev/shm.

Why: leaks and slow failures (a growing stub, a shared-memory region that never
shrinks, one request in ten thousand failing) only show under minutes of steady
traffic. This drives the model with the async gRPC client at a fixed concurrency
for a bounded time, mixes in a small share of hostile requests (they must fail
with INVALID_ARG and must not leak either), samples the resident memory of
tritonserver and of every Python-backend stub process plus the backend's
/dev/shm regions, and fails if any request failed unexpectedly or memory kept
growing after the warm-up.

Loopback only (it refuses any other host), and it stops by itself:

    python -m ofa_ve_bench.soak                         # 600 s against 127.0.0.1:8001
    python -m ofa_ve_bench.soak --duration 120 --concurrency 16 --json soak.json

The server's process is found from the port it listens on (or pass --server-pid).
Exit status 0 when every criterion holds, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
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

import numpy as np
from ofa_ve_data import workload
from ofa_ve_ops.paths import MODEL_NAME as MODEL
from ofa_ve_ops.paths import SHM_REGION_PREFIX, STUB_NAME
from ofa_ve_ops.procfs import (
    children,
    cmdline,
    listening_sockets,
    pids,
    process_state,
    socket_inodes,
    vm_kib,
)

DEFAULT_IMAGES = workload.IMAGES_DIR
MAX_BATCH_ITEMS = 32  # config.pbtxt max_batch_size


# ---------------------------------------------------------------- process inspection


def stub_pids(server_pid: int) -> list[int]:
    """Live (not zombie) Python-backend stub processes of one tritonserver."""
    return [
        pid
        for pid in children(server_pid)
        if any(part.endswith(STUB_NAME) for part in cmdline(pid)[:1])
        and process_state(pid) not in (None, "Z", "X")
    ]


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """Every (address, port) that process `pid` listens on."""
    table = listening_sockets()
    return sorted(table[i] for i in socket_inodes(pid) if i in table)


def pid_listening_on(port: int) -> int | None:
    """The process listening on TCP `port`, if this user can see it."""
    inodes = {i for i, (_, p) in listening_sockets().items() if p == port}
    for pid in pids():
        if socket_inodes(pid) & inodes:
            return pid
    return None


def shm_regions(server_pid: int | None = None) -> dict[str, int]:
    """Python-backend /dev/shm regions -> bytes actually held (touched pages).

    With `server_pid`, only the regions its stubs were started with.
    """
    names = None
    if server_pid is not None:
        names = {
            part
            for pid in children(server_pid)
            for part in cmdline(pid)
            if part.startswith(SHM_REGION_PREFIX)
        }
    held = {}
    for entry in os.scandir("/dev/shm"):
        if entry.name.startswith(SHM_REGION_PREFIX) and (names is None or entry.name in names):
            try:
                held[entry.name] = entry.stat().st_blocks * 512
            except FileNotFoundError:
                continue
    return held


# ---------------------------------------------------------------- traffic


def check_loopback(url: str) -> str:
    """Refuse anything but a loopback host: a soak is never aimed at someone else."""
    host = url.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return url
    try:
        if ipaddress.ip_address(host).is_loopback:
            return url
    except ValueError:
        pass
    raise ValueError(f"soak targets loopback only (127.0.0.0/8, ::1, localhost), not {host!r}")


@dataclass(frozen=True)
class Payload:
    image: bytes
    hypothesis: bytes
    premise: bytes | None
    hostile: bool = False


def load_payloads(images_dir: Path, seed: int = 0) -> list[Payload]:
    """The workload's photos and texts (4 per image), plus a few hostile requests (about 1
    in 14)."""
    images = workload.image_paths("all", images_dir)
    real = workload.items(4 * len(images), "all", seed=seed, images_dir=images_dir)
    valid = [Payload(image, h.encode(), p.encode() or None) for image, h, p in real]
    rng = random.Random(seed)
    first = images[0].read_bytes()
    hostile = [
        Payload(b"", b"An empty file.", None, True),
        Payload(first[: len(first) // 2], b"A truncated file.", None, True),
        Payload(first, b"invalid \xff\xfe utf-8", None, True),
        Payload(first, b"   ", None, True),
    ]
    rng.shuffle(valid)
    # Spread evenly (one in `every`, the first early) so even a short soak sends some.
    every = max(2, len(valid) // len(hostile))
    for n, payload in enumerate(hostile):
        valid.insert(min(len(valid), 3 + n * every), payload)
    return valid


def build_inputs(items: Sequence[Payload], infer_input_cls) -> list:
    """One request carrying `items` along the batch dimension (an empty PREMISE is
    sent for items without one when any item has one: empty means absent)."""

    def tensor(name: str, values: list[bytes]):
        inp = infer_input_cls(name, [len(values), 1], "BYTES")
        inp.set_data_from_numpy(np.array(values, dtype=np.object_).reshape(-1, 1))
        return inp

    inputs = [
        tensor("IMAGE", [p.image for p in items]),
        tensor("HYPOTHESIS", [p.hypothesis for p in items]),
    ]
    if any(p.premise is not None for p in items):
        inputs.append(tensor("PREMISE", [p.premise or b"" for p in items]))
    return inputs


# ---------------------------------------------------------------- the soak


@dataclass
class SoakConfig:
    url: str = "127.0.0.1:8001"
    duration_s: float = 600.0
    concurrency: int = 8
    warmup_s: float | None = None
    """Memory is baselined after this (default: a quarter of the duration). The stub's
    RSS climbs for a while as the allocator meets new batch shapes, then plateaus."""
    sample_interval_s: float = 5.0
    server_pid: int | None = None
    images_dir: Path = DEFAULT_IMAGES
    request_timeout_s: float = 120.0
    max_rss_growth: float = 0.05
    """Allowed growth of each process's RSS after warm-up, as a fraction..."""
    rss_slack_mib: float = 16.0
    """...or this many MiB, whichever is larger (allocator noise on short runs)."""
    max_shm_growth_mib: float = 0.0
    """Allowed growth of the stubs' /dev/shm regions after warm-up."""

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
    anon_kib: dict[int, int]
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
        data = asdict(self)
        data["passed"] = self.passed
        return json.dumps(data, indent=2, default=str)


def _sample(server_pid: int, started: float, requests: int) -> Sample:
    pids = [server_pid, *stub_pids(server_pid)]
    rss, anon = {}, {}
    for pid in pids:
        try:
            rss[pid] = vm_kib(pid, "VmRSS")
            anon[pid] = vm_kib(pid, "RssAnon")
        except (FileNotFoundError, ProcessLookupError, KeyError):
            continue
    shm = sum(shm_regions(server_pid).values())
    return Sample(round(time.monotonic() - started, 2), requests, rss, anon, shm)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _judge(report: SoakReport, cfg: SoakConfig, log) -> None:
    if report.errors:
        report.failures.append(f"{report.errors} unexpected errors: {report.error_messages}")
    if report.ok == 0:
        report.failures.append("no request succeeded")
    after = [s for s in report.samples if s.t_s >= cfg.warmup_s]
    if len(after) < 2:
        report.failures.append("too few samples after warm-up to judge memory")
        return
    # Memory is judged on medians: of the first and of the last third of the samples
    # after warm-up. A leak moves the whole distribution up; the activations of one
    # large batch come and go and only move the peak (reported, not judged).
    third = max(1, len(after) // 3)
    head, tail = after[:third], after[-third:]
    for pid in after[0].rss_kib:
        if any(pid not in s.rss_kib for s in tail):
            report.failures.append(f"process {pid} disappeared during the soak")
            continue
        role = "tritonserver" if pid == report.server_pid else f"stub {pid}"
        base = statistics.median(s.rss_kib[pid] for s in head if pid in s.rss_kib)
        end = statistics.median(s.rss_kib[pid] for s in tail)
        anon_base = statistics.median(s.anon_kib[pid] for s in head if pid in s.anon_kib)
        anon_end = statistics.median(s.anon_kib[pid] for s in tail)
        peak = max(s.rss_kib.get(pid, 0) for s in after)
        growth = {
            "after_warmup_mib": round(base / 1024, 1),
            "at_end_mib": round(end / 1024, 1),
            "peak_mib": round(peak / 1024, 1),
            "growth_mib": round((end - base) / 1024, 1),
            "growth_pct": round(100.0 * (end - base) / base, 2),
            "anon_growth_mib": round((anon_end - anon_base) / 1024, 1),
        }
        report.rss_growth[role] = growth
        allowed_kib = max(cfg.max_rss_growth * base, cfg.rss_slack_mib * 1024)
        if end - base > allowed_kib:
            report.failures.append(
                f"{role} RSS grew {growth['growth_mib']} MiB ({growth['growth_pct']}%) "
                f"after warm-up, over the allowed {allowed_kib / 1024:.1f} MiB"
            )
    first, last = after[0], after[-1]
    report.shm_growth_mib = round((last.shm_bytes - first.shm_bytes) / 2**20, 1)
    if report.shm_growth_mib > cfg.max_shm_growth_mib:
        report.failures.append(f"/dev/shm regions grew {report.shm_growth_mib} MiB after warm-up")
    log(f"soak: {'PASSED' if report.passed else 'FAILED'} {'; '.join(report.failures)}")


async def run_soak(cfg: SoakConfig, log=print) -> SoakReport:
    """Run one bounded soak and judge it; never raises for server-side failures."""
    import tritonclient.grpc.aio as aio
    from tritonclient.grpc import InferInput
    from tritonclient.utils import InferenceServerException

    port = int(cfg.url.rsplit(":", 1)[1])
    server_pid = cfg.server_pid or pid_listening_on(port)
    if server_pid is None:
        raise RuntimeError(f"no process of this user listens on port {port}; pass --server-pid")
    payloads = load_payloads(cfg.images_dir)
    report = SoakReport(
        config={k: str(v) for k, v in asdict(cfg).items()},
        server_pid=server_pid,
        stub_pids=stub_pids(server_pid),
    )
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    next_payload = iter(range(10**12))

    async with aio.InferenceServerClient(cfg.url) as client:
        if not await client.is_model_ready(MODEL):
            raise RuntimeError(f"model {MODEL} is not ready at {cfg.url}")
        # Priming: one request as large as the largest batch this soak can form, so the
        # stub's allocator meets its biggest activations before the clock starts.
        valid = [p for p in payloads if not p.hostile]
        await client.infer(
            MODEL,
            build_inputs(valid[: min(cfg.concurrency, MAX_BATCH_ITEMS)], InferInput),
            client_timeout=cfg.request_timeout_s,
        )
        started = time.monotonic()
        deadline = started + cfg.duration_s

        async def worker() -> None:
            while time.monotonic() < deadline:
                payload = payloads[next(next_payload) % len(payloads)]
                sent = time.monotonic()
                report.requests += 1
                try:
                    result = await client.infer(
                        MODEL,
                        build_inputs([payload], InferInput),
                        client_timeout=cfg.request_timeout_s,
                    )
                except InferenceServerException as e:
                    if payload.hostile and e.status() == "StatusCode.INVALID_ARGUMENT":
                        report.expected_invalid += 1
                    else:
                        errors[f"{e.status()}: {e.message()}"[:200]] += 1
                    continue
                if payload.hostile:
                    errors["a hostile request was answered"] += 1
                    continue
                probs = result.as_numpy("PROBS")
                if probs is None or probs.shape != (1, 3) or abs(float(probs.sum()) - 1) > 1e-3:
                    errors[f"malformed PROBS {probs!r}"[:200]] += 1
                    continue
                report.ok += 1
                latencies.append(time.monotonic() - sent)

        async def sampler() -> None:
            while True:
                sample = _sample(server_pid, started, report.requests)
                report.samples.append(sample)
                rss = ", ".join(f"{pid}={kib / 1024:.0f}MiB" for pid, kib in sample.rss_kib.items())
                shm_mib = sample.shm_bytes / 2**20
                log(
                    f"soak: t={sample.t_s:6.1f}s requests={sample.requests} ok={report.ok} "
                    f"errors={sum(errors.values())} rss[{rss}] shm={shm_mib:.0f}MiB"
                )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                await asyncio.sleep(min(cfg.sample_interval_s, remaining))

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        await sampling
        report.samples.append(_sample(server_pid, started, report.requests))

    elapsed = time.monotonic() - started
    report.errors = sum(errors.values())
    report.error_messages = dict(errors.most_common(10))
    report.throughput_rps = round(report.ok / elapsed, 2)
    ordered = sorted(latencies)
    if ordered:
        report.latency_ms = {
            "p50": round(1000 * statistics.median(ordered), 1),
            "p95": round(1000 * _percentile(ordered, 0.95), 1),
            "p99": round(1000 * _percentile(ordered, 0.99), 1),
            "max": round(1000 * ordered[-1], 1),
        }
    _judge(report, cfg, log)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC HOST:PORT (loopback only)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--warmup", type=float, help="seconds before memory is baselined")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds")
    parser.add_argument("--server-pid", type=int, help="tritonserver PID (default: by port)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images")
    parser.add_argument("--max-rss-growth-pct", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="write the full report here")
    args = parser.parse_args(argv)
    try:
        cfg = SoakConfig(
            url=args.url,
            duration_s=args.duration,
            concurrency=args.concurrency,
            warmup_s=args.warmup,
            sample_interval_s=args.sample_interval,
            server_pid=args.server_pid,
            images_dir=args.images,
            max_rss_growth=args.max_rss_growth_pct / 100,
        )
    except ValueError as e:
        parser.error(str(e))
    try:
        report = asyncio.run(run_soak(cfg))
    except RuntimeError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    summary = {
        k: getattr(report, k)
        for k in ("requests", "ok", "expected_invalid", "errors", "throughput_rps", "latency_ms")
    }
    print(
        json.dumps(
            {
                **summary,
                "rss_growth": report.rss_growth,
                "shm_growth_mib": report.shm_growth_mib,
                "passed": report.passed,
            },
            indent=2,
        )
    )
    if args.json:
        args.json.write_text(report.to_json() + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
