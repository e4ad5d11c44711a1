"""A short soak (scripts/ofa_ve_bench/soak.py, the same code as the 10-minute run) against the
session's tritonserver: zero unexpected errors, hostile requests refused, and no
memory or /dev/shm growth after the warm-up."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from ofa_ve_bench.soak import check_loopback

SCRIPT = ("-m", "ofa_ve_bench.soak")


@pytest.mark.slow
def test_short_soak(triton_server, tmp_path):
    """16 s at concurrency 4 through the CLI; the server's PID is found from its port."""
    report_path = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            *SCRIPT,
            "--url",
            triton_server.grpc_url,
            "--duration",
            "16",
            "--concurrency",
            "4",
            "--warmup",
            "6",
            "--sample-interval",
            "2",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    print(run.stdout, run.stderr)
    report = json.loads(report_path.read_text())
    assert report["server_pid"] == triton_server.pid
    assert report["errors"] == 0, report["error_messages"]
    assert report["ok"] >= 8, f"only {report['ok']} requests answered in 16 s"
    assert report["expected_invalid"] >= 1, "no hostile request was mixed in"
    stubs = report["stub_pids"]
    assert len(stubs) >= 1
    assert {"tritonserver", f"stub {stubs[0]}"} <= set(report["rss_growth"])
    assert len([s for s in report["samples"] if s["t_s"] >= 6]) >= 5
    assert report["passed"], report["failures"]
    assert run.returncode == 0
    summary = json.loads(run.stdout[run.stdout.index("{") :])
    assert summary["passed"] is True and summary["errors"] == 0


def test_soak_refuses_non_loopback_targets():
    for url in ("10.0.0.5:8001", "example.com:8001", "0.0.0.0:8001", "[2001:db8::1]:8001"):
        with pytest.raises(ValueError, match="loopback only"):
            check_loopback(url)
    for url in ("127.0.0.1:8001", "localhost:8001", "[::1]:8001", "127.1.2.3:1"):
        assert check_loopback(url) == url


@pytest.mark.slow
def test_soak_cli_reports_and_fails_without_a_server(tmp_path):
    """The CLI exits non-zero with a clear message when nothing listens on the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, *SCRIPT, "--url", f"127.0.0.1:{port}", "--duration", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"no process of this user listens on port {port}" in out.stderr
    bad = subprocess.run(
        [sys.executable, *SCRIPT, "--url", "192.0.2.1:8001"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "loopback only" in bad.stderr
