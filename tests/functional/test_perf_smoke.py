"""A short real run of the perf_analyzer sweep against the session server, so it cannot rot.

Not a benchmark: no timing is asserted. It checks that perf_analyzer accepts the
generated input data (real encoded images, BYTES values with their length
prefix), that every request succeeds, that the CSV holds one row per level, and
that a failing request is reported as an error rather than hidden.
"""

from __future__ import annotations

import base64
import csv
import json
import struct
from pathlib import Path

from ofa_ve_bench import perf_analyzer_sweep as sweep
from ofa_ve_data import workload


def test_input_data_holds_length_prefixed_real_inputs(tmp_path: Path) -> None:
    items = workload.items(4)
    path = sweep.write_input_data(items, tmp_path / "input.json")
    data = json.loads(path.read_text())["data"]
    assert len(data) == 4
    for (image, hypothesis, premise), entry in zip(items, data, strict=True):
        for name, value in (("IMAGE", image), ("HYPOTHESIS", hypothesis), ("PREMISE", premise)):
            raw = base64.b64decode(entry[name]["b64"])
            value = value if isinstance(value, bytes) else value.encode()
            assert raw == struct.pack("<I", len(value)) + value
            assert entry[name]["shape"] == [1]
    assert {bool(premise) for _, _, premise in items} == {True, False}


def test_sweep_writes_rows_without_errors(triton_server, tmp_path: Path) -> None:
    points = sweep.sweep(
        url=triton_server.grpc_url,
        out_dir=tmp_path,
        concurrency=[1, 2],
        request_rates=[3.0],
        steps=4,
        request_count=2,
        timeout_s=120,
    )
    with (tmp_path / "sweep.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mode"], float(r["level"])) for r in rows] == [
        ("concurrency", 1.0),
        ("concurrency", 2.0),
        ("request_rate", 3.0),
    ]
    for row, point in zip(rows, points, strict=True):
        assert int(row["errors"]) == 0, point.note
        assert float(row["throughput"]) > 0
        assert 0 < float(row["p50_ms"]) <= float(row["p99_ms"])
        assert int(row["server_requests"]) >= 2
        assert float(row["avg_batch"]) >= 1
    assert "| c=1 |" in (tmp_path / "sweep.md").read_text()


def test_failed_requests_are_counted_as_errors(triton_server, tmp_path: Path) -> None:
    bad = sweep.write_input_data([(b"not an image", "A cat.", "")], tmp_path / "bad.json")
    point = sweep.run_point(
        url=triton_server.grpc_url,
        model=sweep.MODEL_NAME,
        protocol="grpc",
        input_data=bad,
        mode="concurrency",
        level=1,
        work_dir=tmp_path,
        request_count=2,
        timeout_s=120,
    )
    assert point.errors >= 1
    assert "IMAGE" in point.note
