"""An overload storm against a running server: is excess refused at once, not after a wait?

N requests of `--items` items each (a real JPEG and a hypothesis per item; 1 by
default, up to max_batch_size 32: the queue counts requests, the work counts
items, docs/reliability.md) are sent at the same moment
over gRPC (tritonclient's async calls, one channel), each with a client deadline
longer than the server's queue timeout, so the server, not the client, decides
every outcome. For each request it records the outcome (answered, or the status
and message of the refusal) and the seconds until it came. A refusal is "at once"
when it came within `--prompt` seconds (default 2) of being sent; a refusal after
that is a request that waited in a queue for nothing. The server is probed with
one more request afterwards: it must still answer.

Bounded: N requests at most 2,000, one storm, a hard deadline; loopback only.

    .venv/bin/python -m ofa_ve_bench.storm --url 127.0.0.1:8001 [--requests 320]
        [--items 1] [--deadline 40] [--prompt 2] [--json storm.json]
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ofa_ve_data.workload import HYPOTHESES, IMAGES_DIR
from ofa_ve_ops.paths import MODEL_NAME

from ofa_ve_bench import machine

MAX_REQUESTS = 2000
MAX_ITEMS = 32
_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\]\s*")
IMAGE = IMAGES_DIR / "astronaut_640x480.jpg"


def _inputs(image: bytes, hypotheses: Sequence[str]) -> list[Any]:
    """One request: the image once per hypothesis, as [items, 1] BYTES tensors."""
    import tritonclient.grpc as grpcclient

    tensors = []
    columns = (
        ("IMAGE", [image] * len(hypotheses)),
        ("HYPOTHESIS", [h.encode() for h in hypotheses]),
    )
    for name, values in columns:
        tensor = grpcclient.InferInput(name, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[v] for v in values], dtype=np.object_))
        tensors.append(tensor)
    return tensors


def _loopback(url: str) -> None:
    host = url.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        raise SystemExit(f"storm: refusing to storm {url}: loopback servers only")


def storm(
    url: str, requests: int, deadline_s: float, prompt_s: float, items: int = 1
) -> dict[str, Any]:
    """Send `requests` of `items` items each at once; every outcome with its time, and
    the verdicts."""
    import tritonclient.grpc as grpcclient

    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be 1..{MAX_REQUESTS}")
    if not 1 <= items <= MAX_ITEMS:
        raise ValueError(f"items must be 1..{MAX_ITEMS}")
    _loopback(url)
    image = IMAGE.read_bytes()
    outcomes: queue.Queue[tuple[int, float, str, str]] = queue.Queue()
    sent_at: dict[int, float] = {}
    with grpcclient.InferenceServerClient(url) as client:
        client.get_model_metadata(MODEL_NAME)  # the channel is up before the storm
        payloads = [
            _inputs(image, [HYPOTHESES[(i + j) % len(HYPOTHESES)] for j in range(items)])
            for i in range(requests)
        ]

        def done(index: int, result: Any, error: Any) -> None:
            seconds = time.perf_counter() - sent_at[index]
            if error is None:
                outcomes.put((index, seconds, "answered", ""))
            else:
                status = str(error.status()).rsplit(".", 1)[-1]
                outcomes.put((index, seconds, status, error.message()[:200]))

        for index, tensors in enumerate(payloads):
            sent_at[index] = time.perf_counter()  # set before the call its callback reads
            client.async_infer(
                MODEL_NAME,
                tensors,
                callback=lambda result, error, i=index: done(i, result, error),
                client_timeout=deadline_s,
            )
        results = []
        end = time.monotonic() + deadline_s + 30  # a hard bound for the collection
        while len(results) < requests and time.monotonic() < end:
            try:
                results.append(outcomes.get(timeout=1.0))
            except queue.Empty:
                continue
        probe_started = time.perf_counter()
        probe = client.infer(MODEL_NAME, _inputs(image, HYPOTHESES[:1]), client_timeout=120)
        probe_s = time.perf_counter() - probe_started
        assert probe.as_numpy("LABEL") is not None
    return {"items_per_request": items, **summarize(results, requests, prompt_s, probe_s)}


def summarize(
    results: Sequence[tuple[int, float, str, str]], requests: int, prompt_s: float, probe_s: float
) -> dict[str, Any]:
    """The verdicts from (index, seconds, outcome, message) tuples (a pure function)."""
    answered = [s for _, s, kind, _ in results if kind == "answered"]
    refused = [(s, kind, msg) for _, s, kind, msg in results if kind != "answered"]
    late = [s for s, _, _ in refused if s > prompt_s]
    messages = Counter(f"{kind}: {_REQUEST_ID.sub('', msg)[:80]}" for _, kind, msg in refused)

    def q(values: list[float], p: float) -> float | None:
        if not values:
            return None
        values = sorted(values)
        return values[min(len(values) - 1, int(p * len(values)))]

    return {
        "requests": requests,
        "outcomes": len(results),
        "missing": requests - len(results),
        "answered": len(answered),
        "refused": len(refused),
        "refused_at_once": len(refused) - len(late),
        "refused_late": len(late),
        "refused_late_max_s": max(late, default=None),
        "refused_max_s": max((s for s, _, _ in refused), default=None),
        "answered_p50_s": statistics.median(answered) if answered else None,
        "answered_max_s": max(answered, default=None),
        "prompt_s": prompt_s,
        "refusals": dict(messages.most_common()),
        "probe_after_s": probe_s,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC HOST:PORT (loopback)")
    parser.add_argument("--requests", type=int, default=320, help="requests sent at once")
    parser.add_argument(
        "--items", type=int, default=1, help=f"items per request, 1..{MAX_ITEMS} (default 1)"
    )
    parser.add_argument(
        "--deadline", type=float, default=40.0, help="client deadline per request, s (default 40)"
    )
    parser.add_argument(
        "--prompt", type=float, default=2.0, help="a refusal within this many s is at once"
    )
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    result = storm(args.url, args.requests, args.deadline, args.prompt, args.items)
    summary = {"machine": machine.describe().to_dict(), **result}
    machine.report(summary, json.dumps(summary, indent=2), args.json)
    return 0 if summary["missing"] == 0 and summary["refused_late"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
