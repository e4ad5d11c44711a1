#!/usr/bin/env python3
"""Load-test a running server with NVIDIA's perf_analyzer: concurrency and request-rate sweeps.

Why perf_analyzer and not a Python load generator: it is the tool Triton users
measure with (C++, no GIL in the client), and its numbers split the latency into
client, queue and compute parts. This script feeds it real work and keeps what
it measures:

- an ``--input-data`` JSON built from the real encoded images under
  ``tests/data/images`` (the server decodes them, as in production) and
  hypotheses with and without premises (an empty PREMISE means "image alone";
  every request carries PREMISE so that all requests can share a batch);
- one perf_analyzer run per load level, with the server's own statistics read
  before and after, so each row also says how many requests failed and how big
  the batches the dynamic batcher formed were;
- a CSV (one row per level) and a Markdown table.

    .venv/bin/python -m ofa_ve_bench.perf_analyzer_sweep --url 127.0.0.1:8001 \\
        --concurrency 1,2,4,8,16,32 --request-rate 1,2,4 --out-dir /tmp/sweep

BYTES tensors in perf_analyzer's JSON: a ``b64`` value is sent as the tensor's raw
buffer, and a BYTES buffer is a 4-byte little-endian length followed by the
bytes, so each value is b64 of exactly that.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ofa_ve_data import workload as _workload
from ofa_ve_data.workload import IMAGES_DIR
from ofa_ve_ops import triton_runtime
from ofa_ve_ops.paths import MODEL_NAME

from ofa_ve_bench.machine import load_average

IMAGE_SUFFIXES = _workload.FORMATS
TEXTS = _workload.LOAD_TEXTS
"""Hypothesis, premise ("" = none): the workload's load texts (ofa_ve_data.workload)."""


def bytes_value(data: bytes) -> dict[str, object]:
    """One BYTES element of shape [1] in perf_analyzer's JSON: b64(len32le + data)."""
    payload = struct.pack("<I", len(data)) + data
    return {"b64": base64.b64encode(payload).decode("ascii"), "shape": [1]}


def workload_images(images_dir: Path = IMAGES_DIR, formats: str = "all") -> list[Path]:
    """The encoded test images, sorted (``formats``: ``all`` or ``jpeg``)."""
    return _workload.image_paths(formats, images_dir)


def workload_items(
    images_dir: Path = IMAGES_DIR, formats: str = "all", steps: int = 0
) -> list[tuple[Path, str, str]]:
    """(image path, hypothesis, premise) items: `ofa_ve_data.workload.path_items`."""
    return _workload.path_items(steps, formats, images_dir)


def workload(
    images_dir: Path = IMAGES_DIR, formats: str = "all", steps: int = 0
) -> list[tuple[bytes, str, str]]:
    """(image bytes, hypothesis, premise) items: `ofa_ve_data.workload.items`."""
    return _workload.items(steps, formats, images_dir=images_dir)


def write_input_data(items: Sequence[tuple[bytes, str, str]], path: Path) -> Path:
    """perf_analyzer ``--input-data`` JSON: one batch-1 request per item, sent in turn."""
    data = [
        {
            "IMAGE": bytes_value(image),
            "HYPOTHESIS": bytes_value(hypothesis.encode("utf-8")),
            "PREMISE": bytes_value(premise.encode("utf-8")),
        }
        for image, hypothesis, premise in items
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}))
    return path


@dataclass
class SweepPoint:
    """One load level: what perf_analyzer measured plus the server's own counters."""

    mode: str
    """``concurrency`` (requests in flight) or ``request_rate`` (requests/s offered)."""
    level: float
    throughput: float
    """Inferences/s that completed during perf_analyzer's measurement."""
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    client_send_recv_ms: float
    """Client send + receive and network + server send/receive, per request."""
    server_queue_ms: float
    server_compute_input_ms: float
    server_compute_infer_ms: float
    server_compute_output_ms: float
    server_requests: int
    """Successful requests the server counted over the whole run of this level."""
    errors: int
    """Requests the server counted as failed, plus 1 if perf_analyzer stopped on an error.

    perf_analyzer stops at the first error response (an INVALID_ARG from the model
    counts as a success in Triton's statistics), so any error makes this non-zero."""
    avg_batch: float
    """Items per model execution formed by the dynamic batcher over this level."""
    seconds: float
    load_before: float
    """1-minute load average of this machine when the level started (noise marker)."""
    note: str = ""


@dataclass
class ServerCounters:
    success: int = 0
    fail: int = 0
    inferences: int = 0
    executions: int = 0


def server_counters(url: str, model: str = MODEL_NAME) -> ServerCounters:
    """Cumulative counters from Triton's statistics API (gRPC)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)
    model_stats = stats.get("model_stats", [])
    if not model_stats:
        raise RuntimeError(f"the server at {url} has no statistics for model {model!r}")
    s = model_stats[0]
    infer = s.get("inference_stats", {})
    return ServerCounters(
        success=int(infer.get("success", {}).get("count", 0)),
        fail=int(infer.get("fail", {}).get("count", 0)),
        inferences=int(s.get("inference_count", 0)),
        executions=int(s.get("execution_count", 0)),
    )


def perf_analyzer_command(
    *,
    url: str,
    model: str,
    protocol: str,
    input_data: Path,
    mode: str,
    level: float,
    csv_path: Path,
    measurement_ms: int,
    stability: int,
    max_trials: int,
    request_count: int,
    max_threads: int,
) -> list[str]:
    """The perf_analyzer command line for one load level."""
    rng = f"{level:g}:{level:g}"
    cmd = [
        "perf_analyzer",
        "-m",
        model,
        "-u",
        url,
        "-i",
        protocol,
        "--input-data",
        str(input_data),
        "-f",
        str(csv_path),
        "--verbose-csv",
    ]
    if mode == "concurrency":
        cmd += ["--concurrency-range", rng]
    else:
        # Constant spacing: what is offered is exactly `level` requests/s.
        cmd += ["--request-rate-range", rng, "--request-distribution", "constant"]
        cmd += ["--max-threads", str(max_threads)]
    if request_count:
        if mode == "request_rate":  # perf_analyzer refuses fewer requests than one second's
            request_count = max(request_count, math.ceil(level))
        cmd += ["--request-count", str(request_count)]
    else:
        cmd += ["-p", str(measurement_ms), "-s", str(stability), "-r", str(max_trials)]
    return cmd


MEASURED = (
    "throughput",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "avg_ms",
    "client_send_recv_ms",
    "server_queue_ms",
    "server_compute_input_ms",
    "server_compute_infer_ms",
    "server_compute_output_ms",
)
"""The SweepPoint fields that come from perf_analyzer's CSV."""


def _ms(row: dict[str, str], key: str) -> float:
    return float(row.get(key) or 0) / 1000.0


def parse_perf_csv(text: str) -> dict[str, float]:
    """The first data row of perf_analyzer's ``-f`` CSV (microseconds -> ms)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError("perf_analyzer wrote no result row")
    row = rows[0]
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_ms": _ms(row, "p50 latency"),
        "p90_ms": _ms(row, "p90 latency"),
        "p95_ms": _ms(row, "p95 latency"),
        "p99_ms": _ms(row, "p99 latency"),
        "avg_ms": _ms(row, "Avg latency"),
        "client_send_recv_ms": _ms(row, "Client Send")
        + _ms(row, "Network+Server Send/Recv")
        + _ms(row, "Client Recv"),
        "server_queue_ms": _ms(row, "Server Queue"),
        "server_compute_input_ms": _ms(row, "Server Compute Input"),
        "server_compute_infer_ms": _ms(row, "Server Compute Infer"),
        "server_compute_output_ms": _ms(row, "Server Compute Output"),
    }


def _load() -> float:
    return load_average()


def find_perf_analyzer(env: dict[str, str] | None = None) -> str:
    """The perf_analyzer binary: on PATH, beside this Python, or in a sys.path entry's bin/.

    Why the last place: `pip install --target DIR` (the GPU check's wheelhouse) puts
    the wheel's binary in DIR/bin, which is on no PATH.
    """
    found = shutil.which("perf_analyzer", path=(env or os.environ).get("PATH"))
    if found:
        return found
    places = [Path(sys.executable).parent, *(Path(entry or ".") / "bin" for entry in sys.path)]
    for place in places:
        candidate = place / "perf_analyzer"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError("perf_analyzer not found (install tritonclient[grpc]==2.51.0)")


def run_point(
    *,
    url: str,
    model: str,
    protocol: str,
    input_data: Path,
    mode: str,
    level: float,
    work_dir: Path,
    measurement_ms: int = 5000,
    stability: int = 25,
    max_trials: int = 6,
    request_count: int = 0,
    max_threads: int = 16,
    timeout_s: float = 600.0,
    stats_url: str | None = None,
) -> SweepPoint:
    """One perf_analyzer run at one load level, bracketed by the server's counters.

    ``stats_url`` is the gRPC address for the statistics API (``url`` when the load
    itself goes over gRPC).
    """
    runtime = triton_runtime.prepare_runtime()
    env = triton_runtime.server_env(runtime)
    csv_path = work_dir / f"pa_{mode}_{level:g}.csv"
    csv_path.unlink(missing_ok=True)
    cmd = perf_analyzer_command(
        url=url,
        model=model,
        protocol=protocol,
        input_data=input_data,
        mode=mode,
        level=level,
        csv_path=csv_path,
        measurement_ms=measurement_ms,
        stability=stability,
        max_trials=max_trials,
        request_count=request_count,
        max_threads=max_threads,
    )
    cmd[0] = find_perf_analyzer(env)
    stats_url = stats_url or url
    load_before = _load()
    before = server_counters(stats_url, model)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # run() has killed it
        output, code = f"{exc.stdout or ''}{exc.stderr or ''}", -1
    seconds = time.monotonic() - started
    after = server_counters(stats_url, model)
    (work_dir / f"pa_{mode}_{level:g}.log").write_text(" ".join(cmd) + "\n\n" + str(output))

    executions = after.executions - before.executions
    inferences = after.inferences - before.inferences
    point = {
        "mode": mode,
        "level": level,
        "server_requests": after.success - before.success,
        "errors": after.fail - before.fail,
        "avg_batch": round(inferences / executions, 2) if executions else 0.0,
        "seconds": round(seconds, 1),
        "load_before": round(load_before, 2),
    }
    try:
        if code != 0:
            raise ValueError(f"perf_analyzer exited with {code}")
        measured = parse_perf_csv(csv_path.read_text())
    except (OSError, ValueError, KeyError) as exc:
        last = [line for line in str(output).splitlines() if line.strip()][-3:]
        measured = dict.fromkeys(MEASURED, 0.0)
        point["errors"] = int(point["errors"]) + 1
        point["note"] = f"{exc}: {' | '.join(last)}"[:300]
    return SweepPoint(**{**measured, **point})


COLUMNS = [f.name for f in fields(SweepPoint)]


def write_csv(points: Sequence[SweepPoint], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for p in points:
            writer.writerow(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(p).items()}
            )
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def format_table(points: Sequence[SweepPoint]) -> str:
    """A Markdown table: throughput, latency percentiles, where the time went."""
    lines = [
        "| load | infer/s | p50 ms | p95 ms | p99 ms | queue ms | compute ms "
        "| avg batch | requests | errors | load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        what = f"c={p.level:g}" if p.mode == "concurrency" else f"{p.level:g} req/s"
        compute = p.server_compute_input_ms + p.server_compute_infer_ms + p.server_compute_output_ms
        lines.append(
            f"| {what} | {p.throughput:.2f} | {p.p50_ms:.1f} | {p.p95_ms:.1f} | {p.p99_ms:.1f} "
            f"| {p.server_queue_ms:.1f} | {compute:.1f} | {p.avg_batch:.2f} | {p.server_requests} "
            f"| {p.errors} | {p.load_before:.1f} |"
        )
    notes = [f"- {p.mode} {p.level:g}: {p.note}" for p in points if p.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def sweep(
    *,
    url: str,
    out_dir: Path,
    concurrency: Sequence[int] = (),
    request_rates: Sequence[float] = (),
    model: str = MODEL_NAME,
    protocol: str = "grpc",
    images_dir: Path = IMAGES_DIR,
    formats: str = "all",
    steps: int = 0,
    stats_url: str | None = None,
    items: Sequence[tuple[bytes, str, str]] | None = None,
    **point_options: object,
) -> list[SweepPoint]:
    """Every concurrency level, then every request rate; writes sweep.csv and sweep.md.

    ``items`` (image bytes, hypothesis, premise) replace the test images of ``formats``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if items is None:
        items = workload(images_dir, formats, steps)
    input_data = write_input_data(items, out_dir / "input_data.json")
    points = []
    plan = [("concurrency", float(c)) for c in concurrency]
    plan += [("request_rate", float(r)) for r in request_rates]
    for mode, level in plan:
        point = run_point(
            url=url,
            model=model,
            protocol=protocol,
            input_data=input_data,
            mode=mode,
            level=level,
            work_dir=out_dir,
            stats_url=stats_url,
            **point_options,  # type: ignore[arg-type]
        )
        points.append(point)
        print(
            f"{mode} {level:g}: {point.throughput:.2f} infer/s, p50 {point.p50_ms:.1f} ms, "
            f"p99 {point.p99_ms:.1f} ms, avg batch {point.avg_batch}, errors {point.errors}"
            + (f" ({point.note})" if point.note else ""),
            flush=True,
        )
    write_csv(points, out_dir / "sweep.csv")
    (out_dir / "sweep.md").write_text(format_table(points) + "\n")
    return points


def _numbers(text: str, kind: type) -> list:
    return [kind(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="server address (gRPC port)")
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    parser.add_argument(
        "--stats-url", help="gRPC address for server statistics (default: --url; set it for http)"
    )
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels")
    parser.add_argument("--request-rate", default="", help="comma-separated requests/s")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=IMAGES_DIR)
    parser.add_argument("--formats", default="all", choices=sorted(IMAGE_SUFFIXES))
    parser.add_argument("--steps", type=int, default=0, help="distinct requests (0: auto)")
    parser.add_argument("--measurement-ms", type=int, default=5000, help="perf_analyzer -p")
    parser.add_argument("--stability", type=int, default=25, help="perf_analyzer -s (percent)")
    parser.add_argument("--max-trials", type=int, default=6, help="perf_analyzer -r")
    parser.add_argument(
        "--request-count", type=int, default=0, help="fixed requests per level (no windows)"
    )
    parser.add_argument("--max-threads", type=int, default=16, help="for request-rate mode")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per level")
    args = parser.parse_args(argv)

    if args.protocol == "http" and not args.stats_url:
        parser.error("--protocol http needs --stats-url HOST:GRPC_PORT for the statistics")
    points = sweep(
        url=args.url,
        out_dir=args.out_dir,
        concurrency=_numbers(args.concurrency, int),
        request_rates=_numbers(args.request_rate, float),
        model=args.model,
        protocol=args.protocol,
        images_dir=args.images,
        formats=args.formats,
        steps=args.steps,
        stats_url=args.stats_url,
        measurement_ms=args.measurement_ms,
        stability=args.stability,
        max_trials=args.max_trials,
        request_count=args.request_count,
        max_threads=args.max_threads,
        timeout_s=args.timeout,
    )
    print()
    print(format_table(points))
    print(f"\nCSV: {args.out_dir / 'sweep.csv'}")
    return 1 if any(p.errors for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
