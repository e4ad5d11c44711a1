"""Does overlapping decoding with the forward pass pay? Measured, side by side.

`ExecutionRunner(pipelined=True)` decodes the next forward pass's images while the
current pass runs; `pipelined=False` decodes the whole execution first. This runs
the same executions (real JPEGs, the engine on a demo checkpoint) both ways, in
alternating rounds, and reports items/s of each and their ratio.

On a GPU the forward pass runs on the device while the CPU decodes, which is the
case pipelining is for. On a CPU both share the cores; `--torch-threads 1
--preprocess-threads 1` on a 2-core machine gives the network and the decoder a
core each, the nearest CPU stand-in for "the network runs elsewhere".

    .venv/bin/python -m ofa_ve_bench.overlap --model-dir DIR [--device cpu|cuda]
        [--items 16] [--forward-batch-size 4] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from ofa_ve_bench import machine, workload


def _runner_inputs(items: Sequence[tuple[bytes, str, str | None]]):
    from ofa_ve_engine.serving import RequestInputs

    return [RequestInputs([image], [hyp.encode()], [(premise or "").encode()])
            for image, hyp, premise in items]


def measure(args: argparse.Namespace) -> dict[str, object]:
    import torch
    from ofa_ve_engine import VisualEntailmentEngine
    from ofa_ve_engine.serving import ExecutionRunner

    torch.set_num_threads(args.torch_threads)
    engine = VisualEntailmentEngine.from_model_dir(
        args.model_dir, device=args.device, forward_batch_size=args.forward_batch_size
    )
    width, height = (int(side) for side in args.image_size.lower().split("x"))
    images = workload.large_jpegs(sizes=[(width, height)] * args.items)
    texts = workload.items(args.items, formats="jpeg")
    requests = _runner_inputs([(img, h, p) for img, (_, h, p) in zip(images, texts, strict=True)])
    runners = {
        mode: ExecutionRunner(engine, workers=args.preprocess_threads, pipelined=mode)
        for mode in (False, True)
    }
    for runner in runners.values():  # warm-up: first-call costs out of the figures
        runner.run(requests[: min(len(requests), args.forward_batch_size)])
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for mode, runner in runners.items():
            started = time.perf_counter()
            outcomes = runner.run(requests)
            seconds[mode].append(time.perf_counter() - started)
            assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    for runner in runners.values():
        runner.close()
    rate = {mode: args.items / statistics.median(s) for mode, s in seconds.items()}
    return {
        "machine": str(machine.describe(args.device)),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k != "json"},
        "items_per_s_sequential": rate[False],
        "items_per_s_pipelined": rate[True],
        "pipelined_over_sequential": rate[True] / rate[False],
        "seconds": {"sequential": seconds[False], "pipelined": seconds[True]},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ofa_ve_bench.overlap", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--items", type=int, default=16, help="items per execution")
    parser.add_argument("--image-size", default="640x480", help="JPEG size, WxH")
    parser.add_argument("--forward-batch-size", type=int, default=4)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--preprocess-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    result = measure(args)
    machine.report(result, json.dumps(result, indent=2), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
