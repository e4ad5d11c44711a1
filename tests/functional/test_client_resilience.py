"""Deadlines, retries over a server restart, failover, round-robin, compression, keepalive.

The restart and round-robin tests share the session's spare tritonserver
(`spare_server`, tests/functional/conftest.py); the others use the session server or a
dead port. No assertion here is on wall-clock time (a shared 2-core machine makes those
flaky): the timing of
backoff and failover is pinned by tests/unit/test_client_units.py with a fake clock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest
import tritonclient.grpc as tgrpc
from ofa_ve_client import (
    DeadlineExceededError,
    Item,
    KeepAliveOptions,
    Prediction,
    RetryPolicy,
    ServerUnavailableError,
    VisualEntailmentClient,
)
from ofa_ve_client.retry import RETRYABLE_STATUSES
from ofa_ve_data.workload import HYPOTHESES, TEST_IMAGES
from ofa_ve_ops.server_process import TritonServer
from support.waiting import settled

IMAGE = TEST_IMAGES["tiny_50x40_png"].read_bytes()
MODEL = "ofa_visual_entailment"


def dead_url() -> str:
    """A loopback port with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def same(a: Prediction, b: Prediction) -> bool:
    return a.label == b.label and all(abs(a.probs[k] - b.probs[k]) < 1e-5 for k in a.probs)


@pytest.fixture
def second_server(spare_server: TritonServer) -> Iterator[TritonServer]:
    """The session's spare server (a second one): restarted by one test, round-robined
    by another. Whatever a test did to it, it is READY again afterwards."""
    yield spare_server
    if not spare_server.is_running():
        spare_server.start()
    spare_server.wait_ready()


def success_count(url: str) -> int:
    with tgrpc.InferenceServerClient(url) as c:
        stats = c.get_inference_statistics(MODEL, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def test_tiny_deadline_fires(triton_server):
    with VisualEntailmentClient(triton_server.grpc_url, timeout=0.001) as client:
        with pytest.raises(DeadlineExceededError) as info:
            client.predict(IMAGE, "no time at all")
        assert isinstance(info.value, TimeoutError)
        assert info.value.status == "DEADLINE_EXCEEDED"
        # The per-call timeout overrides the client's default.
        assert isinstance(client.predict(IMAGE, "enough time", timeout=60), Prediction)


@pytest.mark.timeout(420)  # a hang in the restart must fail fast, with every stack
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_retries_ride_over_a_server_restart(second_server, how):
    """Stop (SIGTERM) or kill (SIGKILL) the server mid-batch and start it again on the
    same ports: every item is answered exactly once, with the right answer."""
    batch = [Item(IMAGE, HYPOTHESES[i % len(HYPOTHESES)], f"premise {i}") for i in range(10)]
    # CANCELLED too: a call that reaches a server shutting down (SIGTERM: Triton drains,
    # unloads, then stops its gRPC frontend) can be cancelled by the server, and the
    # client's default policy does not retry that (it cannot tell it from a cancel of
    # its own). Seen once in seven runs of the [stop] case on this 2-core machine.
    patient = RetryPolicy(
        max_attempts=200,
        initial_backoff=0.05,
        max_backoff=0.5,
        retryable_statuses=RETRYABLE_STATUSES | {"CANCELLED"},
    )
    with VisualEntailmentClient(second_server.grpc_url, retry=patient, timeout=120) as client:
        expected = client.predict_batch(batch)
        done = [0]
        first_results = threading.Event()

        def progress(n: int) -> None:
            done[0] += n
            first_results.set()

        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["results"] = client.predict_batch(
                    batch, batch_size=1, concurrency=2, return_exceptions=True, progress=progress
                )
            except BaseException as exc:  # surfaced by the assertions below
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        assert first_results.wait(60), "no result before the restart"
        getattr(second_server, how)()
        answered_before_restart = done[0]
        second_server.start()
        worker.join(150)
        assert not worker.is_alive()
        second_server.wait_ready()

    assert "error" not in outcome, outcome.get("error")
    results = outcome["results"]
    assert answered_before_restart < len(batch), "the restart did not land mid-batch"
    assert done[0] == len(batch)  # each item reported once
    assert len(results) == len(batch)
    for got, want in zip(results, expected, strict=True):
        assert isinstance(got, Prediction), got
        assert same(got, want)


def test_failover_to_the_next_url(triton_server):
    urls = [dead_url(), triton_server.grpc_url]
    # Moving on to the next URL without backoff: tests/unit/test_client_units.py (fake clock).
    with VisualEntailmentClient(urls, timeout=30) as client:
        results = [client.predict(IMAGE, HYPOTHESES[i]) for i in range(6)]
        assert all(isinstance(r, Prediction) for r in results)
        assert client.is_server_ready()  # one of the two is enough
        health = {h["url"]: h for h in client.health()}
        assert health[urls[0]]["ready"] is False and "error" in health[urls[0]]
        assert health[urls[1]]["model_ready"] is True


def test_unreachable_server_fails_fast_without_retries():
    with VisualEntailmentClient(dead_url(), retry=RetryPolicy.disabled()) as client:
        with pytest.raises(ServerUnavailableError) as info:
            client.predict(IMAGE, "nobody home")
        assert info.value.attempts == 1  # fails at once: no retry
        assert info.value.status == "UNAVAILABLE"
        assert isinstance(info.value, ConnectionError)
        assert client.is_server_ready() is False


def test_retries_give_up_at_the_deadline():
    """The deadline, not the attempt budget, ends the retries: several attempts were
    made, far fewer than allowed, and the error says so."""
    patient = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.2)
    with (
        VisualEntailmentClient(dead_url(), retry=patient, timeout=1.0) as client,
        pytest.raises(DeadlineExceededError) as info,
    ):
        client.predict(IMAGE, "nobody home")
    assert info.value.status == "DEADLINE_EXCEEDED"
    made = re.search(r"deadline of 1s exceeded after (\d+) attempt", str(info.value))
    assert made, str(info.value)
    assert 1 < int(made.group(1)) < patient.max_attempts, str(info.value)


def test_round_robin_spreads_calls_over_servers(triton_server, second_server):
    urls = [triton_server.grpc_url, second_server.grpc_url]
    before = [success_count(u) for u in urls]
    with VisualEntailmentClient(urls) as client:
        for i in range(10):
            client.predict(IMAGE, HYPOTHESES[i])
    after = settled(
        lambda: [success_count(u) for u in urls],
        lambda now: sum(now) - sum(before) >= 10,
        "Triton's counts of the 10 calls",
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [5, 5]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compression(triton_server, algorithm):
    with VisualEntailmentClient(triton_server.grpc_url) as plain:
        want = plain.predict(IMAGE, HYPOTHESES[0])
    with VisualEntailmentClient(triton_server.grpc_url, compression_algorithm=algorithm) as c:
        assert same(c.predict(IMAGE, HYPOTHESES[0]), want)


def test_keepalive_options(triton_server):
    keepalive = KeepAliveOptions(keepalive_time_ms=20_000, keepalive_timeout_ms=5_000)
    with VisualEntailmentClient(triton_server.grpc_url, keepalive=keepalive) as client:
        assert isinstance(client.predict(IMAGE, HYPOTHESES[1]), Prediction)
