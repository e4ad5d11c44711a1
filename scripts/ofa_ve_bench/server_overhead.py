"""What the server adds to one request beyond the engine, side by side.

Alternating rounds time the same single-item request (a real JPEG and a
hypothesis) in two ways: (a) in this process, `ExecutionRunner.run` (prepare
and predict, which is what model.py does in `execute`), and (b) through a real
tritonserver on loopback over gRPC, one request at a time, so no queueing. The
difference of the medians is the server's own per-request cost: gRPC in and
out, Triton's scheduling and queue delay, the stub's shared-memory hand-over
and the Python adapter. Triton's own statistics split (b) into queue, compute
input, compute infer and compute output.

    .venv/bin/python -m ofa_ve_bench.server_overhead --model-dir DIR [--requests 20]
        [--rounds 3] [--image tests/data/images/astronaut_640x480.jpg] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ofa_ve_ops.paths import MODEL_NAME

from ofa_ve_bench import machine
from ofa_ve_bench.workload import IMAGES_DIR

HYPOTHESIS = "A woman in a space suit."


def _median_ms(call: Callable[[], object], count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _triton_split(client, before: dict) -> dict[str, float]:
    """Per-request averages (ms) of Triton's own duration counters since `before`."""
    now = client.get_inference_statistics(MODEL_NAME, as_json=True)["model_stats"][0]
    stats, old = now["inference_stats"], before["inference_stats"]
    count = int(stats["success"]["count"]) - int(old["success"]["count"])
    out = {}
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        ns = int(stats[key]["ns"]) - int(old[key]["ns"])
        out[f"{key}_ms"] = ns / max(1, count) / 1e6
    return out


def measure(args: argparse.Namespace) -> dict[str, object]:
    import tritonclient.grpc as grpcclient
    from ofa_ve_engine import VisualEntailmentEngine
    from ofa_ve_engine.serving import ExecutionRunner, RequestInputs
    from ofa_ve_ops.server_process import TritonServer

    image = args.image.read_bytes()
    engine = VisualEntailmentEngine.from_model_dir(args.model_dir, device="cpu",
                                                   forward_batch_size=None)
    runner = ExecutionRunner(engine, workers=1)
    request = [RequestInputs([image], [HYPOTHESIS.encode()], [b""])]

    def in_process() -> None:
        (outcome,) = runner.run(request)
        assert outcome.error is None, outcome.error

    inputs = [grpcclient.InferInput(name, [1, 1], "BYTES")
              for name in ("IMAGE", "HYPOTHESIS", "PREMISE")]
    for tensor, value in zip(inputs, (image, HYPOTHESIS.encode(), b""), strict=True):
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))

    log_dir = Path(tempfile.mkdtemp(prefix="server-overhead-"))
    with TritonServer(model_dir=args.model_dir, log_dir=log_dir) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)

        def served() -> None:
            client.infer(MODEL_NAME, inputs)

        for call in (in_process, served):  # warm-up
            _median_ms(call, 3)
        rounds = []
        for _ in range(args.rounds):
            engine_ms = _median_ms(in_process, args.requests)
            before = client.get_inference_statistics(MODEL_NAME, as_json=True)["model_stats"][0]
            server_ms = _median_ms(served, args.requests)
            rounds.append({"engine_ms": engine_ms, "server_ms": server_ms,
                           "overhead_ms": server_ms - engine_ms,
                           "triton": _triton_split(client, before)})
        client.close()
    runner.close()
    return {
        "machine": str(machine.describe("cpu")),
        "image": args.image.name,
        "requests_per_round": args.requests,
        "median_engine_ms": statistics.median(r["engine_ms"] for r in rounds),
        "median_server_ms": statistics.median(r["server_ms"] for r in rounds),
        "median_overhead_ms": statistics.median(r["overhead_ms"] for r in rounds),
        "rounds": rounds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ofa_ve_bench.server_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=20, help="requests per round and way")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", type=Path, default=IMAGES_DIR / "astronaut_640x480.jpg")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    result = measure(args)
    machine.report(result, json.dumps(result, indent=2), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
