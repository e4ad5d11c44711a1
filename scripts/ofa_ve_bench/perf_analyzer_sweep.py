#!/usr/bin/env python3
"""Load-test a running server with NVIDIA's perf_analyzer: concurrency and request-rate sweeps.

Why perf_analyzer and not a Python load generator: it is the tool Triton users measure
with (C++, no GIL in the client), and it splits latency into client, queue and compute.
It is fed real work: an ``--input-data`` JSON of the workload's encoded images (the server
decodes them, as in production) and texts, every request with a PREMISE (empty: the image
alone) so that all can share a batch. Each level is one perf_analyzer run, bracketed by
the server's own statistics (failed requests, the batches formed); the levels go to a CSV
and a Markdown table.

    .venv/bin/python -m ofa_ve_bench.perf_analyzer_sweep --url 127.0.0.1:8001 \\
        --concurrency 1,2,4,8,16,32 --request-rate 1,2,4 --out-dir /tmp/sweep
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
from typing import Any

from ofa_ve_data import workload
from ofa_ve_data.workload import IMAGES_DIR
from ofa_ve_ops import triton_runtime
from ofa_ve_ops.paths import MODEL_NAME

from ofa_ve_bench.machine import load_average
from ofa_ve_bench.results import listed, load_name, markdown_table


def bytes_value(data: bytes) -> dict[str, object]:
    """One BYTES element of shape [1] in perf_analyzer's JSON: a ``b64`` value is sent as
    the tensor's raw buffer, and a BYTES buffer is a 4-byte little-endian length, then
    the bytes."""
    payload = struct.pack("<I", len(data)) + data
    return {"b64": base64.b64encode(payload).decode("ascii"), "shape": [1]}


def write_input_data(items: Sequence[tuple[bytes, str, str]], path: Path) -> Path:
    """perf_analyzer ``--input-data`` JSON: one batch-1 request per item, sent in turn."""
    data = [
        {"IMAGE": bytes_value(image), "HYPOTHESIS": bytes_value(hypothesis.encode()),
         "PREMISE": bytes_value(premise.encode())}
        for image, hypothesis, premise in items
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}))
    return path


@dataclass
class SweepPoint:
    """One load level: what perf_analyzer measured (ms) and the server's own counters.

    `errors`: failed requests the server counted, plus 1 where perf_analyzer stopped on an
    error (it stops at the first; an INVALID_ARG answer counts as a success in Triton's
    statistics). `avg_batch`: items per model execution the dynamic batcher formed.
    """

    mode: str  # "concurrency" (requests in flight) or "request_rate" (requests/s offered)
    level: float
    throughput: float  # inferences/s
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_queue_ms: float
    server_compute_ms: float  # input + infer + output
    server_requests: int  # successful, over the whole run of this level
    errors: int
    avg_batch: float
    seconds: float
    load_before: float
    note: str = ""


# SweepPoint field -> perf_analyzer's CSV columns (microseconds, summed).
CSV_COLUMNS = {
    "p50_ms": ("p50 latency",),
    "p95_ms": ("p95 latency",),
    "p99_ms": ("p99 latency",),
    "server_queue_ms": ("Server Queue",),
    "server_compute_ms": ("Server Compute Input", "Server Compute Infer", "Server Compute Output"),
}


def parse_perf_csv(text: str) -> dict[str, float]:
    """The first data row of perf_analyzer's ``-f`` CSV (microseconds -> ms)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError("perf_analyzer wrote no result row")
    out = {"throughput": float(rows[0]["Inferences/Second"])}
    for key, columns in CSV_COLUMNS.items():
        out[key] = sum(float(rows[0].get(c) or 0) for c in columns) / 1000.0
    return out


def server_counters(url: str, model: str = MODEL_NAME) -> dict[str, int]:
    """Cumulative success, fail, inference and execution counts (Triton's statistics, gRPC)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True).get("model_stats", [])
    if not stats:
        raise RuntimeError(f"the server at {url} has no statistics for model {model!r}")
    infer = stats[0].get("inference_stats", {})
    return {
        "success": int(infer.get("success", {}).get("count", 0)),
        "fail": int(infer.get("fail", {}).get("count", 0)),
        "inferences": int(stats[0].get("inference_count", 0)),
        "executions": int(stats[0].get("execution_count", 0)),
    }


def find_perf_analyzer(env: dict[str, str] | None = None) -> str:
    """The perf_analyzer binary: on PATH, beside this Python, or in a sys.path entry's bin/
    (`pip install --target DIR`, the GPU check's wheelhouse, puts it in DIR/bin)."""
    found = shutil.which("perf_analyzer", path=(env or os.environ).get("PATH"))
    if found:
        return found
    for place in [Path(sys.executable).parent, *(Path(e or ".") / "bin" for e in sys.path)]:
        candidate = place / "perf_analyzer"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError("perf_analyzer not found (install tritonclient[grpc]==2.51.0)")


def run_point(*, url: str, input_data: Path, mode: str, level: float, work_dir: Path,
              model: str = MODEL_NAME, protocol: str = "grpc", measurement_ms: int = 5000,
              stability: int = 25, max_trials: int = 6, request_count: int = 0,
              max_threads: int = 16, timeout_s: float = 600.0, stats_url: str | None = None,
              ) -> SweepPoint:
    """One perf_analyzer run at one load level, bracketed by the server's counters
    (read at ``stats_url``, a gRPC address; ``url`` when the load goes over gRPC)."""
    env = triton_runtime.server_env(triton_runtime.prepare_runtime())
    name = f"pa_{mode}_{level:g}"
    csv_path = work_dir / f"{name}.csv"
    csv_path.unlink(missing_ok=True)
    cmd = [find_perf_analyzer(env), "-m", model, "-u", url, "-i", protocol,
           "--input-data", str(input_data), "-f", str(csv_path), "--verbose-csv"]
    if mode == "concurrency":
        cmd += ["--concurrency-range", f"{level:g}:{level:g}"]
    else:  # constant spacing: exactly `level` requests/s are offered
        cmd += ["--request-rate-range", f"{level:g}:{level:g}", "--request-distribution",
                "constant", "--max-threads", str(max_threads)]
        request_count = request_count and max(request_count, math.ceil(level))  # its minimum
    if request_count:
        cmd += ["--request-count", str(request_count)]
    else:
        cmd += ["-p", str(measurement_ms), "-s", str(stability), "-r", str(max_trials)]
    load_before, before = load_average(), server_counters(stats_url or url, model)
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # run() has killed it
        output, code = f"{exc.stdout or ''}{exc.stderr or ''}", -1
    seconds = time.monotonic() - started
    after = server_counters(stats_url or url, model)
    (work_dir / f"{name}.log").write_text(" ".join(cmd) + "\n\n" + output)
    delta = {key: after[key] - before[key] for key in after}
    note = ""
    try:
        if code != 0:
            raise ValueError(f"perf_analyzer exited with {code}")
        measured = parse_perf_csv(csv_path.read_text())
    except (OSError, ValueError, KeyError) as exc:
        last = [line for line in output.splitlines() if line.strip()][-3:]
        measured = dict.fromkeys(["throughput", *CSV_COLUMNS], 0.0)
        note = f"{exc}: {' | '.join(last)}"[:300]
    executions = delta["executions"]
    return SweepPoint(
        mode=mode, level=level, **measured, server_requests=delta["success"],
        errors=delta["fail"] + bool(note),
        avg_batch=round(delta["inferences"] / executions, 2) if executions else 0.0,
        seconds=round(seconds, 1), load_before=round(load_before, 2), note=note,
    )


def format_table(points: Sequence[SweepPoint]) -> str:
    """A Markdown table: throughput, latency percentiles, where the time went."""
    columns = ("load", "infer/s:", "p50 ms:", "p95 ms:", "p99 ms:", "queue ms:", "compute ms:",
               "avg batch:", "requests:", "errors:", "load avg:")
    rows = [(load_name(p.mode, p.level), f"{p.throughput:.2f}", f"{p.p50_ms:.1f}",
             f"{p.p95_ms:.1f}", f"{p.p99_ms:.1f}", f"{p.server_queue_ms:.1f}",
             f"{p.server_compute_ms:.1f}", f"{p.avg_batch:.2f}", p.server_requests, p.errors,
             f"{p.load_before:.1f}") for p in points]
    notes = [f"- {p.mode} {p.level:g}: {p.note}" for p in points if p.note]
    return "\n".join(markdown_table(columns, rows) + (["", *notes] if notes else []))


def sweep(*, url: str, out_dir: Path, concurrency: Sequence[int] = (),
          request_rates: Sequence[float] = (), images_dir: Path = IMAGES_DIR,
          formats: str = "all", steps: int = 0,
          items: Sequence[tuple[bytes, str, str]] | None = None, **point_options: Any,
          ) -> list[SweepPoint]:
    """Every concurrency level, then every request rate (``point_options`` go to
    `run_point`); writes sweep.csv and sweep.md. ``items`` (image bytes, hypothesis,
    premise) replace the test images of ``formats``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if items is None:
        items = workload.items(steps, formats, images_dir=images_dir)
    input_data = write_input_data(items, out_dir / "input_data.json")
    plan = [("concurrency", float(c)) for c in concurrency]
    plan += [("request_rate", float(r)) for r in request_rates]
    points = []
    for mode, level in plan:
        p = run_point(url=url, input_data=input_data, work_dir=out_dir, mode=mode, level=level,
                      **point_options)
        points.append(p)
        print(
            f"{mode} {level:g}: {p.throughput:.2f} infer/s, p50 {p.p50_ms:.1f} ms, p99 "
            f"{p.p99_ms:.1f} ms, avg batch {p.avg_batch}, errors {p.errors}"
            + (f" ({p.note})" if p.note else ""),
            flush=True,
        )
    with (out_dir / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in fields(SweepPoint)])
        writer.writeheader()
        writer.writerows({k: round(v, 3) if isinstance(v, float) else v
                          for k, v in asdict(p).items()} for p in points)
    (out_dir / "sweep.md").write_text(format_table(points) + "\n")
    return points


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--url", default="127.0.0.1:8001", help="server address (gRPC port)")
    add("--protocol", default="grpc", choices=["grpc", "http"])
    add("--stats-url", help="gRPC address for server statistics (default: --url; set for http)")
    add("--model", default=MODEL_NAME)
    add("--concurrency", default="1,2,4,8", type=lambda s: listed(s, int), metavar="N,N,..")
    add("--request-rate", dest="request_rates", default="", type=lambda s: listed(s, float),
        metavar="R,R,..", help="requests/s offered")
    add("--out-dir", type=Path, required=True)
    add("--images", dest="images_dir", type=Path, default=IMAGES_DIR, metavar="DIR")
    add("--formats", default="all", choices=sorted(workload.FORMATS))
    add("--steps", type=int, default=0, help="distinct requests (0: auto)")
    add("--measurement-ms", type=int, default=5000, help="perf_analyzer -p")
    add("--stability", type=int, default=25, help="perf_analyzer -s (percent)")
    add("--max-trials", type=int, default=6, help="perf_analyzer -r")
    add("--request-count", type=int, default=0, help="fixed requests per level (no windows)")
    add("--max-threads", type=int, default=16, help="for request-rate mode")
    add("--timeout", dest="timeout_s", type=float, default=600.0, metavar="S", help="per level")
    args = parser.parse_args(argv)
    if args.protocol == "http" and not args.stats_url:
        parser.error("--protocol http needs --stats-url HOST:GRPC_PORT for the statistics")
    points = sweep(**vars(args))
    print(f"\n{format_table(points)}\n\nCSV: {args.out_dir / 'sweep.csv'}")
    return 1 if any(p.errors for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
