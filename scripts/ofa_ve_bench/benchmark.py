#!/usr/bin/env python3
"""ModelScope's pipeline, the engine and the Triton server side by side, in one run.

Why one run: the machines this runs on are shared and noisy, so absolute numbers drift;
ratios measured close together on the same checkpoint, images and texts are what can be
compared. So the server starts first, then ``--rounds`` rounds each measure in turn:

(a) ModelScope's own pipeline, one item per call from the image files (the only way it
    works: the baseline); (b) the engine in this process, prepare + predict at several
    batch sizes (`engine_runner`); (c) a real tritonserver on loopback, perf_analyzer over
    gRPC with the same encoded images at several concurrencies (`server_run`,
    `perf_analyzer_sweep`). Ratios are taken within each round (`results`).

The server runs a copy of ``model_repository/`` with the config edits given (`model_config`);
the same ``--param`` values, checked by the model's own parameter table, configure (b).

    .venv/bin/python -m ofa_ve_bench.benchmark --model-dir DIR --out-dir /tmp/bench \\
        [--device cpu|cuda] [--concurrency 1,2,4,8,16] [--param KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from ofa_ve_data import workload
from ofa_ve_engine.parameters import parse_assignments
from ofa_ve_ops import model_config

from ofa_ve_bench import engine_runner, machine, results, server_run
from ofa_ve_bench.perf_analyzer_sweep import sweep
from ofa_ve_bench.results import listed

say = functools.partial(machine.say, "benchmark")


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (environment variables for the server) -> dict."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        env[key.strip()] = value.strip()
    return env


def modelscope_call(model_dir: Path, device: str, paths: Sequence[tuple]) -> Callable[[int], None]:
    """(a): ModelScope's pipeline, built once on `device`; calling it with n runs the n-th
    item of `paths` (image path, hypothesis, premise)."""
    from ofa_ve_reference import modelscope_pipeline as reference

    with reference.preserved_global_rngs(), reference.offline_environment():
        pipe = reference.build_pipeline(model_dir, device)

    def call(n: int) -> None:
        path, hypothesis, premise = paths[n % len(paths)]
        pipe({"image": str(path), "text": hypothesis, **({"text2": premise} if premise else {})})

    call(0)  # first-call costs
    return call


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model-dir", type=Path, required=True, help="ModelScope model dir")
    add("--out-dir", type=Path, required=True)
    add("--device", default="cpu", help="cpu, cuda or cuda:N")
    add("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    add("--formats", default="all", choices=sorted(workload.FORMATS))
    add("--rounds", type=int, default=3, help="(a), (b), (c) in turn, N times")
    add("--modelscope-seconds", type=float, default=20.0, help="0 skips (a)")
    add("--engine-batch-sizes", default="1,2,4,8", help="empty skips (b)")
    add("--engine-seconds", type=float, default=15.0)
    add("--concurrency", default="1,2,4,8,16", help="empty skips (c)")
    add("--request-rate", default="")
    add("--measurement-ms", type=int, default=10000)
    add("--stability", type=int, default=25)
    add("--max-trials", type=int, default=6)
    add("--request-count", type=int, default=0, help="fixed requests per level (no windows)")
    add("--level-timeout", type=float, default=600.0)
    add("--instances", type=int, help="instance_group count")
    add("--max-batch-size", type=int)
    add("--queue-delay-us", type=int)
    add("--preferred", help="preferred_batch_size, e.g. 4,8")
    pairs = {"action": "append", "default": [], "metavar": "KEY=VALUE"}
    add("--param", **pairs, help="config.pbtxt parameter for the server and the engine (b)")
    add("--server-env", **pairs, help="tritonserver's environment, e.g. OMP_WAIT_POLICY=PASSIVE")
    add("--torch-threads", type=int, default=0, help="for (a) and (b)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    concurrency, rates = listed(args.concurrency, int), listed(args.request_rate, float)
    sizes = listed(args.engine_batch_sizes, int)
    try:
        params = parse_assignments([f"dtype={args.dtype}", *args.param])
        server_env = parse_env(args.server_env)
    except ValueError as exc:
        parser.error(str(exc))

    import torch

    threads = args.torch_threads or int(params.get("torch_threads", "0").replace("auto", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir.resolve()
    started = dt.datetime.now().astimezone()
    facts = machine.describe(args.device)
    out: dict = {
        "title": f"{platform.node()} {args.device} {args.dtype}, "
        f"{started:%Y-%m-%d %H:%M %Z}, model {model_dir.name}",
        "date": started.isoformat(timespec="seconds"),
        "machine": str(facts),
        "machine_facts": facts.to_dict(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "params": params,
        "rounds": [],
    }
    blobs = workload.items(formats=args.formats)
    sweep_options = {k: getattr(args, k) for k in ("measurement_ms", "stability", "max_trials",
                                                    "request_count", "formats")}
    sweep_options.update(concurrency=concurrency, request_rates=rates, timeout_s=args.level_timeout)

    server = reference = engine = None
    if concurrency or rates:
        say("(c) starting the Triton server (cold start) ...")
        preferred = None if args.preferred is None else listed(args.preferred, int)
        edits = model_config.ConfigEdits(
            max_batch_size=args.max_batch_size, instances=args.instances,
            queue_delay_us=args.queue_delay_us, preferred_batch_sizes=preferred, parameters=params)
        server = server_run.start_server(model_dir, args.out_dir / "server-log", edits, server_env)
        say(f"server READY after {server.ready_after_s:.1f} s ({server.grpc_url})")
    try:
        if args.modelscope_seconds > 0:
            say("(a) building ModelScope's pipeline ...")
            paths = workload.path_items(formats=args.formats)
            reference = modelscope_call(model_dir, args.device, paths)
        if sizes:
            say("(b) building the engine ...")
            # At least the largest batch per forward pass: (b) measures whole batches.
            auto = params.get("forward_batch_size", "auto") == "auto"
            forward = {"forward_batch_size": max(sizes)} if auto else {}
            engine = engine_runner.build_engine(model_dir, args.device, params, **forward)
            out["engine_settings"] = engine_runner.engine_settings(engine)
        for n in range(1, args.rounds + 1):
            round_: dict = {"round": n, "load_before": machine.load_average(), "engine": []}
            if reference is not None:
                r = results.timed("modelscope_pipeline", 1, reference, args.modelscope_seconds, 3)
                round_["modelscope"] = r.summary()
                say(f"round {n} (a) ModelScope: {r.items_per_s:.2f} items/s")
            for size in sizes:  # (b), built where there are sizes
                r = engine_runner.measure_engine(engine, blobs, size, args.engine_seconds)
                round_["engine"].append(r.summary())
                say(f"round {n} (b) engine batch {size}: {r.items_per_s:.2f} items/s")
            if server is not None:
                points = sweep(url=server.grpc_url, out_dir=args.out_dir / f"sweep-{n}",
                               **sweep_options)
                round_["server"] = [asdict(p) for p in points]
            out["rounds"].append(round_)
        if server is not None:
            out["server"] = server_run.server_facts(server)
    finally:
        if server is not None:
            server.stop()

    out["summary"] = results.aggregate(out["rounds"])
    text = results.report(out)
    (args.out_dir / "benchmark.md").write_text(text + "\n")
    machine.report(out, "\n" + text, args.out_dir / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
