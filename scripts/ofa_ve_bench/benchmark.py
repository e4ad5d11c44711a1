#!/usr/bin/env python3
"""ModelScope's pipeline, the engine and the Triton server side by side, in one run.

Why one run: the machines this runs on are shared and noisy, so absolute numbers
drift from minute to minute; ratios measured close together on the same
checkpoint, the same images and the same texts are what can be compared. So the
server starts first, and then ``--rounds`` rounds each measure (a), (b) and (c)
in turn; ratios are taken within each round and reported as the median and
range over rounds. Each round records the machine's load average.

    .venv/bin/python -m ofa_ve_bench.benchmark --model-dir DIR --out-dir /tmp/bench \\
        --plot /tmp/bench/throughput.png [--device cpu|cuda] [--concurrency 1,2,4,8,16]

(a) ModelScope's own pipeline, one item per call (the only way it works), from
    the image files (`modelscope_runner`); (b) the engine in this process, no
    server, prepare + predict at several batch sizes, the best one counts
    (`engine_runner`); (c) a real tritonserver on loopback, driven by perf_analyzer
    over gRPC with the same encoded images, at several concurrencies (`server_run`,
    `perf_analyzer_sweep`). Ratios (b)/(a), (c)/(a), (c)/(b) use the best throughput
    of each (`results`). Also: the server's cold start to READY, the peak RSS of
    tritonserver and its stub processes, GPU memory per instance. `report` writes the
    Markdown, `plot` the PNG, `machine` describes the machine.

The server runs a copy of ``model_repository/`` with the config edits given
(``--instances``, ``--max-batch-size``, ``--queue-delay-us``, ``--preferred``,
``--param k=v``; `model_config`); the same ``--param`` values, validated by the
model's own parameter table, configure the in-process engine, so (b) and (c) run
the same engine settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ofa_ve_data import workload

from ofa_ve_bench import engine_runner, machine, model_config, results, server_run
from ofa_ve_bench import perf_analyzer_sweep as sweep_mod
from ofa_ve_bench.report import report


def _say(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (environment variables for the server) -> dict."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        env[key.strip()] = value.strip()
    return env


def config_edits(args: argparse.Namespace, params: dict[str, str]) -> model_config.ConfigEdits:
    """The command line's config.pbtxt edits (None: as committed)."""
    return model_config.ConfigEdits(
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        queue_delay_us=args.queue_delay_us,
        preferred_batch_sizes=model_config.preferred_sizes(args.preferred),
        parameters=params,
    )


def sweep_server(server: Any, out_dir: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    """(c) of one round: the perf_analyzer sweep against the running server."""
    points = sweep_mod.sweep(
        url=server.grpc_url,
        out_dir=out_dir,
        concurrency=args.concurrency,
        request_rates=args.request_rate,
        formats=args.formats,
        measurement_ms=args.measurement_ms,
        stability=args.stability,
        max_trials=args.max_trials,
        request_count=args.request_count,
        timeout_s=args.level_timeout,
    )
    return [asdict(p) for p in points]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="ModelScope model dir")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="PNG path (default: OUT_DIR/benchmark.png)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--formats", default="all", choices=sorted(workload.FORMATS))
    parser.add_argument("--rounds", type=int, default=3, help="(a), (b), (c) in turn, N times")
    parser.add_argument("--modelscope-seconds", type=float, default=20.0, help="0 skips (a)")
    parser.add_argument("--engine-batch-sizes", default="1,2,4,8", help="empty skips (b)")
    parser.add_argument("--engine-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="empty skips (c)")
    parser.add_argument("--request-rate", default="")
    parser.add_argument("--measurement-ms", type=int, default=10000)
    parser.add_argument("--stability", type=int, default=25)
    parser.add_argument("--max-trials", type=int, default=6)
    parser.add_argument(
        "--request-count", type=int, default=0, help="fixed requests per level (no windows)"
    )
    parser.add_argument("--level-timeout", type=float, default=600.0)
    parser.add_argument("--instances", type=int, help="instance_group count")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--queue-delay-us", type=int)
    parser.add_argument("--preferred", help="preferred_batch_size, e.g. 4,8")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config.pbtxt parameter for the server and the in-process engine",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for tritonserver and its stubs (e.g. OMP_WAIT_POLICY=PASSIVE)",
    )
    parser.add_argument("--torch-threads", type=int, default=0, help="for (a) and (b)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.concurrency = sweep_mod._numbers(args.concurrency, int)
    args.request_rate = sweep_mod._numbers(args.request_rate, float)
    try:
        params = engine_runner.validated_params([f"dtype={args.dtype}", *args.param])
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
    out: dict[str, object] = {
        "title": f"{platform.node()} {args.device} {args.dtype}, "
        f"{started:%Y-%m-%d %H:%M %Z}, model {model_dir.name}",
        "date": started.isoformat(timespec="seconds"),
        "machine": str(facts),
        "machine_facts": facts.to_dict(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "params": params,
        "rounds": [],
    }
    paths = workload.path_items(formats=args.formats)
    blobs = workload.items(formats=args.formats)
    sizes = sweep_mod._numbers(args.engine_batch_sizes, int)

    server = None
    if args.concurrency or args.request_rate:
        _say("(c) starting the Triton server (cold start) ...")
        server = server_run.start_server(
            model_dir, args.out_dir / "server-log", config_edits(args, params), server_env
        )
        _say(f"server READY after {server.ready_after_s:.1f} s ({server.grpc_url})")
    try:
        reference = None
        if args.modelscope_seconds > 0:
            from ofa_ve_bench.modelscope_runner import ModelScopeRunner

            _say("(a) building ModelScope's pipeline ...")
            reference = ModelScopeRunner(model_dir, args.device, paths)
        engine = None
        if sizes:
            _say("(b) building the engine ...")
            # At least the largest batch per forward pass: (b) measures whole batches.
            forward = {"forward_batch_size": max(sizes)}
            if params.get("forward_batch_size", "auto") != "auto":
                forward = {}
            engine, dropped = engine_runner.build_engine(model_dir, args.device, params, **forward)
            out["engine_settings"] = engine_runner.engine_settings(engine)
            out["engine_options_dropped"] = dropped
        for n in range(args.rounds):
            round_: dict[str, object] = {"round": n + 1, "load_before": machine.load_average()}
            if reference is not None:
                r = reference.measure(args.modelscope_seconds)
                round_["modelscope"] = r.summary()
                _say(f"round {n + 1} (a) ModelScope: {r.items_per_s:.2f} items/s")
            if engine is not None:
                rows = []
                for size in sizes:
                    r = engine_runner.measure_engine(engine, blobs, size, args.engine_seconds)
                    rows.append(r.summary())
                    _say(f"round {n + 1} (b) engine batch {size}: {r.items_per_s:.2f} items/s")
                round_["engine"] = rows
            if server is not None:
                round_["server"] = sweep_server(server, args.out_dir / f"sweep-{n + 1}", args)
            out["rounds"].append(round_)
        if server is not None:
            out["server"] = server_run.server_facts(server)
    finally:
        if server is not None:
            server.stop()

    out["summary"] = results.aggregate(out["rounds"])
    text = report(out)
    (args.out_dir / "results.json").write_text(json.dumps(out, indent=2))
    (args.out_dir / "benchmark.md").write_text(text + "\n")
    if out["summary"].get("server"):
        from ofa_ve_bench.plot import plot

        png = plot(out, args.plot or args.out_dir / "benchmark.png")
        text += f"\n- plot: {png}"
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
