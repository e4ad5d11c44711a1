#!/usr/bin/env python3
"""The whole network side by side: the engine, ONNX Runtime and OpenVINO, in one run.

    python -m ofa_ve_bench.peers --model-dir DIR [--seconds S] [--rounds R]
        [--precisions float32,bfloat16,int8] [--items N] [--threads N] [--onnx FILE]
        [--int8-ignore Gather[,Convolution]] [--param KEY=VALUE ...] [--out peers.json]

Why: a CPU user could serve the network through Triton's OpenVINO or ONNX Runtime
backend instead of our engine; issue 27 asks that the engine be at least as fast as
the faster of them at each precision, with the same answers. So each is measured on
the same machine, at the same time, on the same prepared items (distinct JPEGs, the
load texts; ``ofa_ve_bench.workload``), one item per call (batch 1, as a CPU
instance runs), with the same number of threads:

- ours: ``engine.predict`` of one prepared item, the engine as it serves (``--param``
  takes config.pbtxt's parameters), in float32 and bfloat16, and int8 (``quantization
  int8``: the int8 stem under a float32 network);
- ONNX Runtime (CPU provider) and OpenVINO (CPU) on the graph of
  ``ofa_ve_ops.export_onnx`` (exported and checked here unless ``--onnx`` names one),
  fed the same items through ``export_onnx.network_inputs``. OpenVINO's bfloat16 is
  its inference-precision hint, where the CPU has bfloat16; its int8 is NNCF's
  post-training quantisation of the graph (where nncf is installed), calibrated on
  the workload's test images (not the measured items).

Rows that cannot run here say why. Each row's probabilities
over all items are compared with ours in float32: the largest difference and the
share of equal labels (float32 rows must be within 1e-4). Time: the runtimes take
turns for ``--rounds`` rounds of ``seconds / rounds`` each; ms per item is the median
call. Prints a Markdown table with the machine (``machine.describe``) and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofa_ve_bench import machine, workload

PRECISIONS = ("float32", "bfloat16", "int8")
RUNTIMES = ("ours", "onnxruntime", "openvino")
REFERENCE = ("ours", "float32")
FLOAT32_TOLERANCE = 1e-4
"""Largest probability difference to ours in float32 that a float32 peer may show."""

Run = Callable[[Sequence[Any]], np.ndarray]
"""``run(items) -> [len(items), 3]`` probabilities in LABELS order."""


@dataclass
class Peer:
    """One runtime at one precision: how to run it, or why it is not run here."""

    runtime: str
    precision: str
    run: Run | None
    note: str = ""


@dataclass
class Row:
    """One peer's figures: speed, and its answers against ours in float32."""

    runtime: str
    precision: str
    ms_per_item: float | None = None
    """Median milliseconds of one call of one item; None where not run."""
    calls_timed: int = 0
    max_prob_diff: float | None = None
    label_agreement: float | None = None
    within_tolerance: bool | None = None
    """float32 rows: whether ``max_prob_diff`` <= FLOAT32_TOLERANCE (None otherwise)."""
    note: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def _say(message: str) -> None:
    print(f"peers: {message}", file=sys.stderr, flush=True)


def compare(reference: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Largest absolute probability difference and the share of equal labels."""
    if reference.shape != probs.shape:
        raise ValueError(f"shapes differ: {reference.shape} and {probs.shape}")
    diff = float(np.abs(reference.astype(np.float64) - probs).max())
    agreement = float((reference.argmax(1) == probs.argmax(1)).mean())
    return diff, agreement


def outputs_of(run: Run, items: Sequence[Any]) -> np.ndarray:
    """[N, 3]: ``run`` over every item, one item per call."""
    return np.concatenate([np.asarray(run([item]), dtype=np.float32) for item in items])


def time_calls(run: Run, items: Sequence[Any], seconds: float, start: int = 0) -> list[float]:
    """Milliseconds of one-item calls through ``items`` (from ``start``), for ``seconds``
    (at least one call)."""
    latencies: list[float] = []
    began = time.perf_counter()
    position = start
    while not latencies or time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        run([items[position % len(items)]])
        latencies.append((time.perf_counter() - t0) * 1000)
        position += 1
    return latencies


def side_by_side(
    peers: Sequence[Peer], items: Sequence[Any], *, seconds: float, rounds: int = 3
) -> list[Row]:
    """Each runnable peer's outputs over ``items`` and its time per call, compared with
    the ours/float32 peer (which must be among them and runnable).

    Each peer first runs one call (set-up), then every item once (its outputs); then
    the peers take turns, ``rounds`` times, for ``seconds / rounds`` each, so that a
    change of load on a shared machine falls on all of them.
    """
    runnable = [p for p in peers if p.run is not None]
    keys = [(p.runtime, p.precision) for p in runnable]
    if REFERENCE not in keys:
        raise ValueError("the ours/float32 peer is the reference and must run")
    outputs: dict[tuple[str, str], np.ndarray] = {}
    for peer in runnable:
        _say(f"{peer.runtime} {peer.precision}: every item once")
        peer.run([items[0]])
        outputs[(peer.runtime, peer.precision)] = outputs_of(peer.run, items)
    latencies: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    for r in range(max(1, rounds)):
        _say(f"round {r + 1} of {max(1, rounds)}: {seconds / max(1, rounds):g} s each")
        for peer, key in zip(runnable, keys, strict=True):
            latencies[key] += time_calls(peer.run, items, seconds / max(1, rounds), start=r)
    reference = outputs[REFERENCE]
    rows = []
    for peer in peers:
        row = Row(peer.runtime, peer.precision, note=peer.note)
        key = (peer.runtime, peer.precision)
        if key in outputs:
            row.latencies_ms = latencies[key]
            row.calls_timed = len(row.latencies_ms)
            row.ms_per_item = statistics.median(row.latencies_ms)
            row.max_prob_diff, row.label_agreement = compare(reference, outputs[key])
            if peer.precision == "float32":
                row.within_tolerance = row.max_prob_diff <= FLOAT32_TOLERANCE
        rows.append(row)
    return rows


def _cell(value: float | None, digits: str) -> str:
    return "" if value is None else format(value, digits)


def markdown(rows: Sequence[Row], machine_line: str) -> str:
    """The rows as a Markdown table, with the machine they ran on above it."""
    lines = [
        f"Machine: {machine_line}",
        "",
        "| runtime | precision | ms per item | calls | largest prob. diff vs ours float32 "
        "| labels equal | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        diff = _cell(row.max_prob_diff, ".2g")
        if row.within_tolerance is False:
            diff += f" (over {FLOAT32_TOLERANCE:g})"
        agreement = "" if row.label_agreement is None else f"{row.label_agreement:.1%}"
        lines.append(
            f"| {row.runtime} | {row.precision} | {_cell(row.ms_per_item, '.1f')} "
            f"| {row.calls_timed or ''} | {diff} | {agreement} | {row.note} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ the runtimes


def ours(model_dir: Path, precision: str, params: dict[str, str]) -> tuple[Peer, Any]:
    """The engine as it serves, one item per forward pass, and the engine (None where
    not run)."""
    import torch
    from ofa_ve_engine import cpu_features

    from ofa_ve_bench.engine_runner import build_engine

    note = ""
    if precision == "int8":
        params = {**params, "dtype": "float32", "quantization": "int8"}
        dtype = torch.float32
        note = "quantization int8: the ResNet stem in int8, the rest float32"
        try:
            cpu_features.check_cpu_int8()
        except ValueError:
            note += "; this CPU has no int8 dot-product instructions (served: refused)"
    else:
        dtype = getattr(torch, precision)
        try:
            cpu_features.check_cpu_dtype(dtype)
        except ValueError:
            note = "emulated: this CPU has no native bfloat16"
    engine, _ = build_engine(model_dir, "cpu", params, dtype=dtype, forward_batch_size=1)
    return Peer("ours", precision, engine.predict, note), engine


def onnxruntime_peer(onnx_path: Path, precision: str, threads: int, pad_id: int) -> Peer:
    """ONNX Runtime's CPU provider on the exported graph (float32 only)."""
    if precision != "float32":
        note = (
            "not run: no bfloat16 inference mode in ONNX Runtime's x86 CPU provider"
            if precision == "bfloat16"
            else "not run yet: needs onnxruntime.quantization"
        )
        return Peer("onnxruntime", precision, None, note)
    from ofa_ve_ops.export_onnx import network_inputs, ort_session

    session = ort_session(onnx_path, threads)
    return Peer(
        "onnxruntime", precision, lambda items: session.run(None, network_inputs(items, pad_id))[0]
    )


OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16"}
"""The inference-precision hint per precision (int8 models run their float parts in f32)."""


DEFAULT_INT8_IGNORED = ("Gather",)
"""Operation types NNCF leaves in float: the embedding gathers (issue 27's recipe; NNCF
fails on the token embedding's Gather otherwise)."""


def openvino_peer(
    onnx_path: Path,
    precision: str,
    threads: int,
    pad_id: int,
    calibration: Sequence[dict[str, np.ndarray]] = (),
    int8_ignored: Sequence[str] = DEFAULT_INT8_IGNORED,
) -> Peer:
    """OpenVINO's CPU plugin on the exported graph, in latency mode; bfloat16 through
    its inference-precision hint where the CPU has bfloat16; int8 through NNCF's
    post-training quantisation (transformer mode, ``int8_ignored`` operation types left
    in float32), calibrated on ``calibration`` (the graph's inputs, one item each)."""
    import openvino as ov
    from ofa_ve_ops.export_onnx import network_inputs

    core = ov.Core()
    model: Any = str(onnx_path)
    hint = OPENVINO_PRECISION.get(precision, "f32")
    note = ""
    if precision == "bfloat16" and "BF16" not in core.get_property(
        "CPU", "OPTIMIZATION_CAPABILITIES"
    ):
        return Peer("openvino", precision, None, "not run: this CPU has no bfloat16")
    if precision == "int8":
        try:
            import nncf
        except ImportError:
            return Peer("openvino", precision, None, "not run: nncf is not installed")
        if not calibration:
            return Peer("openvino", precision, None, "not run: no calibration items")
        nncf.set_log_level(logging.ERROR)
        model = nncf.quantize(
            core.read_model(str(onnx_path)),
            nncf.Dataset(list(calibration)),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(types=list(int8_ignored)) if int8_ignored else None,
        )
        note = (
            f"NNCF post-training, transformer mode, {len(calibration)} calibration items; "
            f"in float32: {', '.join(int8_ignored) or 'nothing'}"
        )
    compiled = core.compile_model(
        model,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return Peer(
        "openvino",
        precision,
        lambda items: request.infer(network_inputs(items, pad_id))[output],
        note,
    )


def versions() -> dict[str, str]:
    """The runtimes' versions (where installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "onnxruntime", "openvino", "onnx", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="ModelScope model dir")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per peer")
    parser.add_argument("--rounds", type=int, default=3, help="turns the peers take")
    parser.add_argument(
        "--precisions", default="float32,bfloat16", help=f"comma-separated, of {PRECISIONS}"
    )
    parser.add_argument("--items", type=int, default=12, help="distinct images (prepared)")
    parser.add_argument("--threads", type=int, default=0, help="threads of each (0: torch's)")
    parser.add_argument("--onnx", type=Path, help="an exported graph (default: export here)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config.pbtxt parameter for our engine",
    )
    parser.add_argument(
        "--int8-ignore",
        default=",".join(DEFAULT_INT8_IGNORED),
        help="OpenVINO operation types NNCF leaves in float32 for int8, comma-separated "
        "(e.g. Gather,Convolution: the transformer's matmuls alone)",
    )
    parser.add_argument("--out", type=Path, default=Path("peers.json"), help="JSON results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or "float32" not in precisions:
        print(f"peers: precisions are {PRECISIONS}, float32 among them", file=sys.stderr)
        return 2
    import torch
    from ofa_ve_ops import export_onnx

    from ofa_ve_bench.engine_runner import prepare_all, validated_params

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    params = validated_params(args.param)
    texts = workload.LOAD_TEXTS
    work = [
        (image, *texts[i % len(texts)])
        for i, image in enumerate(workload.distinct_jpegs(args.items))
    ]
    loaded = [ours(args.model_dir, p, params) for p in precisions]
    peers = [peer for peer, _ in loaded]
    engine = loaded[precisions.index("float32")][1]
    items = prepare_all(engine, work)
    pad_id = engine.tokenizer.pad_id
    with tempfile.TemporaryDirectory(prefix="ofa-ve-peers-") as tmp:
        onnx_path = args.onnx
        if onnx_path is None:
            onnx_path = Path(tmp) / "ofa_ve.onnx"
            _say("exporting the network and checking it with ONNX Runtime")
            try:
                export_onnx.export_checked(args.model_dir, onnx_path, items=items)
            except export_onnx.ExportError as e:
                print(f"peers: {e}", file=sys.stderr)
                return 1
        calibration = []
        if "int8" in precisions:
            _say("int8: calibrating on the workload's test images")
            calibration = [
                export_onnx.network_inputs([item], pad_id)
                for item in prepare_all(engine, workload.items())
            ]
        ignored = tuple(t for t in args.int8_ignore.split(",") if t)
        for precision in precisions:
            peers.append(onnxruntime_peer(onnx_path, precision, threads, pad_id))
            peers.append(
                openvino_peer(onnx_path, precision, threads, pad_id, calibration, ignored)
            )
        order = {(r, p): i for i, (p, r) in enumerate(itertools.product(PRECISIONS, RUNTIMES))}
        peers.sort(key=lambda peer: order[(peer.runtime, peer.precision)])
        described = machine.describe("cpu")
        rows = side_by_side(peers, items, seconds=args.seconds, rounds=args.rounds)
    results = {
        "machine": described.to_dict(),
        "load_average_after": machine.load_average(),
        "model_dir": str(args.model_dir),
        "onnx": str(args.onnx) if args.onnx else "exported by this run",
        "threads": threads,
        "items": len(items),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "params": params,
        "int8_ignored": args.int8_ignore,
        "versions": versions(),
        "rows": [asdict(row) for row in rows],
    }
    machine.report(results, markdown(rows, str(described)), args.out)
    failed = [r for r in rows if r.within_tolerance is False]
    for row in failed:
        print(
            f"peers: {row.runtime} float32 differs from ours by {row.max_prob_diff:.3g}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
