"""An overload storm against a running server: is excess refused at once, not after a wait?

Why: the queue is bounded so that excess is refused at admission (docs/reliability.md);
a refusal after a wait is a client that waited for nothing. N requests of ``--items``
items each (a real JPEG and a hypothesis per item: the queue counts requests, the work
counts items) go out at the same moment, each with a client deadline longer than the
server's queue timeout, so the server decides every outcome. A refusal within
``--prompt`` seconds is "at once". Then one more request must be answered. Bounded: at
most 2,000 requests, one storm, a hard deadline; loopback only.

    .venv/bin/python -m ofa_ve_bench.storm --url 127.0.0.1:8001 [--requests 320]
        [--items 1] [--deadline 40] [--prompt 2] [--json storm.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ofa_ve_data.workload import HYPOTHESES, IMAGES_DIR
from ofa_ve_ops.paths import MODEL_NAME

from ofa_ve_bench import machine
from ofa_ve_bench.traffic import Payload, check_loopback, send

MAX_REQUESTS = 2000
MAX_ITEMS = 32
_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\]\s*")
IMAGE = IMAGES_DIR / "astronaut_640x480.jpg"


def storm(
    url: str, requests: int, deadline_s: float, prompt_s: float, items: int = 1
) -> dict[str, Any]:
    """Send `requests` of `items` items each at once; the verdicts of their outcomes."""
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be 1..{MAX_REQUESTS}")
    if not 1 <= items <= MAX_ITEMS:
        raise ValueError(f"items must be 1..{MAX_ITEMS}")
    check_loopback(url)
    image, hypotheses = IMAGE.read_bytes(), [h.encode() for h in HYPOTHESES]
    batches = [[Payload(image, hypotheses[(i + j) % len(hypotheses)]) for j in range(items)]
               for i in range(requests)]

    async def run() -> tuple[list, float]:
        import tritonclient.grpc.aio as aio

        async with aio.InferenceServerClient(url) as client:
            await client.get_model_metadata(MODEL_NAME)  # the channel is up before the storm
            tasks = [asyncio.ensure_future(send(client, b, deadline_s)) for b in batches]
            done, pending = await asyncio.wait(tasks, timeout=deadline_s + 30)  # a hard bound
            for task in pending:
                task.cancel()
            probe_s, outcome, message, _ = await send(client, batches[0][:1], 120)
            if outcome != "answered":
                raise RuntimeError(f"no answer after the storm: {outcome} {message}")
        return [task.result()[:3] for task in tasks if task in done], probe_s

    outcomes, probe_s = asyncio.run(run())
    return {"items_per_request": items, **summarize(outcomes, requests, prompt_s, probe_s)}


def summarize(
    outcomes: Sequence[tuple[float, str, str]], requests: int, prompt_s: float, probe_s: float
) -> dict[str, Any]:
    """The verdicts from (seconds, outcome, message) triples (a pure function)."""
    answered = [s for s, outcome, _ in outcomes if outcome == "answered"]
    refused = [(s, outcome, msg) for s, outcome, msg in outcomes if outcome != "answered"]
    late = [s for s, _, _ in refused if s > prompt_s]
    messages = Counter(f"{status}: {_REQUEST_ID.sub('', msg)[:80]}" for _, status, msg in refused)
    return {
        "requests": requests,
        "outcomes": len(outcomes),
        "missing": requests - len(outcomes),
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
    add = parser.add_argument
    add("--url", default="127.0.0.1:8001", help="gRPC HOST:PORT (loopback)")
    add("--requests", type=int, default=320, help="requests sent at once")
    add("--items", type=int, default=1, help=f"items per request, 1..{MAX_ITEMS} (default 1)")
    add("--deadline", type=float, default=40.0, help="client deadline per request, s")
    add("--prompt", type=float, default=2.0, help="a refusal within this many s is at once")
    add("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    try:
        result = storm(args.url, args.requests, args.deadline, args.prompt, args.items)
    except ValueError as exc:
        parser.error(str(exc))
    summary = {"machine": machine.describe().to_dict(), **result}
    machine.report(summary, json.dumps(summary, indent=2), args.json)
    return 0 if summary["missing"] == 0 and summary["refused_late"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
