"""One image with N hypotheses against N distinct images, side by side.

Why: items with the same image bytes share one decode and one ResNet-stem pass
(`ofa_ve_engine/stem.py`), and the stem is most of the network. This measures
what that buys: one request of N items, all about one 640x480 JPEG, against one
request of N items about N distinct 640x480 JPEGs, for N = 1, 4, 8, 16. It also
measures what the stem cache costs when every lookup misses. It runs in-process
through `ExecutionRunner` (what model.py does per execution) and, with
`--server`, through a real tritonserver over gRPC (one request per call).
Rounds alternate the workloads, so load from neighbours slows them alike. Each
speed-up is given from wall time and from CPU time, beside the share of CPU the
host stole from this VM during the run (`/proc/stat`): on a shared VM the
wall-clock figures are only as good as that share is small.

    .venv/bin/python -m ofa_ve_bench.shared_image --model-dir DIR [--server]
        [--counts 1,4,8,16] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ofa_ve_ops import procfs
from ofa_ve_ops.paths import MODEL_NAME

from ofa_ve_bench import machine, workload


def distinct_jpegs(count: int, size: tuple[int, int] = (640, 480), salt: int = 0) -> list[bytes]:
    """`count` different real photos at `size`, q90; a marker makes repeats differ, and
    a different `salt` gives a set that shares no image with other salts' sets."""
    from PIL import Image, ImageDraw

    sources = workload.image_paths("jpeg")
    out = []
    for n in range(count):
        with Image.open(sources[n % len(sources)]) as img:
            photo = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        marker = (n * 37 % 256, salt % 256, salt // 256 % 256)
        ImageDraw.Draw(photo).rectangle((4, 4, 12 + n, 12 + n), fill=marker)
        buffer = io.BytesIO()
        # The comment makes every (salt, item) file unique even where the marker's
        # colours quantise alike.
        photo.save(buffer, format="JPEG", quality=90, comment=f"salt {salt} item {n}")
        out.append(buffer.getvalue())
    return out


def _timed(call: Callable[[], object], cpu: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds by `cpu`'s clock) of one call."""
    wall, used = time.perf_counter(), cpu()
    call()
    return time.perf_counter() - wall, cpu() - used


def _rows(n: int, times: dict[str, list[tuple[float, float]]]) -> dict:
    """Items/s and speed-ups from wall time, and the same speed-up from CPU time: on a
    shared VM whose host steals CPU from it (`procfs.steal_fraction`), the CPU time is
    the steadier figure."""
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    row = {"n": n, "one_image_items_per_s": n / wall["one"],
           "distinct_items_per_s": n / wall["many"], "speed_up": wall["many"] / wall["one"],
           "cpu_speed_up": cpu["many"] / cpu["one"]}
    if "miss" in times:
        row["cache_miss_items_per_s"] = n / wall["miss"]
        row["cache_miss_cost"] = wall["miss"] / wall["many"]
    return row


def in_process(args: argparse.Namespace, images: list[bytes], texts: list[str]) -> dict:
    from ofa_ve_engine import VisualEntailmentEngine
    from ofa_ve_engine.serving import ExecutionRunner, RequestInputs

    plain = VisualEntailmentEngine.from_model_dir(args.model_dir, device=args.device,
                                                  forward_batch_size=None)
    cached = VisualEntailmentEngine(plain.settings, plain.tokenizer, plain.model,
                                    forward_batch_size=plain.forward_batch_size,
                                    stem_cache_items=4 * max(args.counts))
    runners = {"plain": ExecutionRunner(plain, workers=args.preprocess_threads),
               "cached": ExecutionRunner(cached, workers=args.preprocess_threads)}

    def request(chosen: Sequence[bytes], n: int) -> list:
        return [RequestInputs(list(chosen), [t.encode() for t in texts[:n]], [b""] * n)]

    rows = []
    for n in args.counts:
        one, many = request([images[0]] * n, n), request(images[:n], n)
        # The cached engine always sees fresh images: every lookup misses.
        fresh = [request(distinct_jpegs(n, salt=1 + n * args.rounds + r), n)
                 for r in range(args.rounds)]
        runners["plain"].run(one)  # warm-up
        times: dict[str, list[tuple[float, float]]] = {"one": [], "many": [], "miss": []}
        clock = time.process_time  # every thread of this process
        for r in range(args.rounds):
            times["one"].append(_timed(lambda one=one: runners["plain"].run(one), clock))
            times["many"].append(_timed(lambda many=many: runners["plain"].run(many), clock))
            times["miss"].append(_timed(lambda req=fresh[r]: runners["cached"].run(req), clock))
        rows.append(_rows(n, times))
    for runner in runners.values():
        runner.close()
    return {"rows": rows, "stem_cache": {"hits": cached.stem_cache.hits,
                                         "misses": cached.stem_cache.misses}}


def served(args: argparse.Namespace, images: list[bytes], texts: list[str]) -> dict:
    import tritonclient.grpc as grpcclient
    from ofa_ve_ops.server_process import TritonServer

    def inputs(chosen: Sequence[bytes], n: int) -> list:
        tensors = [grpcclient.InferInput(name, [n, 1], "BYTES")
                   for name in ("IMAGE", "HYPOTHESIS", "PREMISE")]
        columns = (list(chosen), [t.encode() for t in texts[:n]], [b""] * n)
        for tensor, column in zip(tensors, columns, strict=True):
            tensor.set_data_from_numpy(np.array(column, dtype=np.object_).reshape(n, 1))
        return tensors

    rows = []
    log_dir = Path(tempfile.mkdtemp(prefix="shared-image-"))
    with TritonServer(model_dir=args.model_dir, log_dir=log_dir) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)

        def server_cpu() -> float:  # tritonserver and its stub processes
            assert server.pid is not None
            return sum(procfs.cpu_seconds(p) for p in [server.pid, *procfs.descendants(server.pid)])

        for n in args.counts:
            one, many = inputs([images[0]] * n, n), inputs(images[:n], n)
            client.infer(MODEL_NAME, one)  # warm-up
            times: dict[str, list[tuple[float, float]]] = {"one": [], "many": []}
            for _ in range(args.rounds):
                for key, request in (("one", one), ("many", many)):
                    call = functools.partial(client.infer, MODEL_NAME, request)
                    times[key].append(_timed(call, server_cpu))
            rows.append(_rows(n, times))
        client.close()
    return {"rows": rows}


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}", ""]
    for where in ("in_process", "server"):
        if where not in result:
            continue
        lines += [f"### {where.replace('_', ' ')}", "",
                  "| N | one image, N hypotheses (items/s) | N distinct images (items/s) | "
                  "speed-up | speed-up in CPU time | every stem-cache lookup missing (items/s) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in result[where]["rows"]:
            miss = row.get("cache_miss_items_per_s")
            miss_text = f"{miss:.2f} ({row['cache_miss_cost']:.2f}x the time)" if miss else "-"
            lines.append(f"| {row['n']} | {row['one_image_items_per_s']:.2f} | "
                         f"{row['distinct_items_per_s']:.2f} | {row['speed_up']:.2f}x | "
                         f"{row['cpu_speed_up']:.2f}x | {miss_text} |")
        lines.append("")
    lines.append(f"CPU time the host stole from this VM meanwhile: {result['steal']:.0%} "
                 "(above a few per cent the wall-clock columns are unreliable and the CPU-time "
                 "one is steadier; at tens of per cent, run it again later).")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ofa_ve_bench.shared_image", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--counts", default="1,4,8,16", help="hypotheses per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preprocess-threads", type=int, default=2)
    parser.add_argument("--server", action="store_true", help="also through a tritonserver")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    args.counts = [int(c) for c in args.counts.split(",") if c.strip()]
    images = distinct_jpegs(max(args.counts))
    texts = [text for _, text, _ in workload.items(max(args.counts))]
    before = procfs.cpu_times()
    result: dict = {"machine": str(machine.describe(args.device)),
                    "in_process": in_process(args, images, texts)}
    if args.server:
        result["server"] = served(args, images, texts)
    result["steal"] = procfs.steal_fraction(before, procfs.cpu_times())
    machine.report(result, markdown(result), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
