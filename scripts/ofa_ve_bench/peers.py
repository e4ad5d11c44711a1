#!/usr/bin/env python3
"""The whole network side by side: the engine, ONNX Runtime and OpenVINO, in one run.

Why: a CPU user could serve the network through Triton's OpenVINO or ONNX Runtime backend
instead; issue 27 asks that the engine be at least as fast as the faster of them at each
precision, with the same answers. So all run on the same machine, at the same time, on the
same prepared items, one item per call, with the same threads, taking turns round by round:
ours as it serves (``--param``; int8 is ``quantization int8``), the peers on the graph of
``ofa_ve_ops.export_onnx``; each row's answers against ours in float32 (docs/benchmarks.md:
what each row is).

    python -m ofa_ve_bench.peers --model-dir DIR [--seconds S] [--rounds R]
        [--precisions float32,bfloat16,int8] [--items N] [--threads N] [--onnx FILE]
        [--int8-ignore Gather[,Convolution]] [--param KEY=VALUE ...] [--out peers.json]
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ofa_ve_data import workload

from ofa_ve_bench import machine
from ofa_ve_bench.engine_runner import Predict, load_engine, predict_all, prepare_all
from ofa_ve_bench.results import compare, listed, markdown_table, timed

PRECISIONS = ("float32", "bfloat16", "int8")
REFERENCE = ("ours", "float32")
FLOAT32_TOLERANCE = 1e-4
"""Largest probability difference to ours in float32 that a float32 peer may show."""


@dataclass
class Peer:
    """One runtime at one precision: how to run it, or why it is not run here."""

    runtime: str
    precision: str
    run: Predict | None
    note: str = ""


@dataclass
class Row:
    """One peer's figures (None where not run): the median ms of a one-item call, and its
    answers against ours in float32 (float32 rows: `within_tolerance`)."""

    runtime: str
    precision: str
    ms_per_item: float | None = None
    calls_timed: int = 0
    max_prob_diff: float | None = None
    label_agreement: float | None = None
    within_tolerance: bool | None = None
    note: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)


say = functools.partial(machine.say, "peers")


def side_by_side(
    peers: Sequence[Peer], items: Sequence[Any], *, seconds: float, rounds: int = 3
) -> list[Row]:
    """Each runnable peer's outputs over ``items``, one item per call (after one set-up
    call), against the ours/float32 peer's, then its time per call: the peers take turns,
    ``rounds`` times, ``seconds / rounds`` each, so that a change of load falls on all."""
    runnable = {(p.runtime, p.precision): p.run for p in peers if p.run is not None}
    if REFERENCE not in runnable:
        raise ValueError("the ours/float32 peer is the reference and must run")
    outputs: dict[tuple[str, str], np.ndarray] = {}
    for key, run in runnable.items():
        say(f"{' '.join(key)}: every item once")
        run([items[0]])
        outputs[key] = predict_all(run, items, 1)
    latencies: dict[tuple[str, str], list[float]] = {key: [] for key in runnable}
    rounds = max(1, rounds)
    for r in range(rounds):
        say(f"round {r + 1} of {rounds}: {seconds / rounds:g} s each")
        for key, run in runnable.items():
            one = lambda n, run=run, r=r: run([items[(r + n) % len(items)]])  # noqa: E731
            latencies[key] += timed("", 1, one, seconds / rounds).latencies_ms
    rows = []
    for peer in peers:
        row = Row(peer.runtime, peer.precision, note=peer.note)
        key = (peer.runtime, peer.precision)
        if key in outputs:
            row.latencies_ms = latencies[key]
            row.calls_timed = len(row.latencies_ms)
            row.ms_per_item = statistics.median(row.latencies_ms)
            figures = compare(outputs[REFERENCE], outputs[key])
            row.max_prob_diff, row.label_agreement = (
                figures["max_prob_diff"], figures["label_agreement"])
            if peer.precision == "float32":
                row.within_tolerance = row.max_prob_diff <= FLOAT32_TOLERANCE
        rows.append(row)
    return rows


def markdown(rows: Sequence[Row], machine_line: str) -> str:
    """The rows as a Markdown table, with the machine they ran on above it."""
    cells = []
    for row in rows:
        ms, diff, agreement = (
            "" if x is None else format(x, f)
            for x, f in ((row.ms_per_item, ".1f"), (row.max_prob_diff, ".2g"),
                         (row.label_agreement, ".1%"))
        )
        diff += f" (over {FLOAT32_TOLERANCE:g})" if row.within_tolerance is False else ""
        cells.append((row.runtime, row.precision, ms, row.calls_timed or "", diff, agreement,
                      row.note))
    columns = ("runtime", "precision", "ms per item:", "calls:",
               "largest prob. diff vs ours float32:", "labels equal:", "note")
    return "\n".join([f"Machine: {machine_line}", "", *markdown_table(columns, cells)])


# ------------------------------------------------------------------ the runtimes


def ours(model_dir: Path, precision: str, params: dict[str, str]) -> tuple[Peer, Any]:
    """The engine as it serves, one item per forward pass, and the engine."""
    import torch
    from ofa_ve_engine import cpu_features

    note = ""
    try:
        if precision == "int8":
            note = "quantization int8: the ResNet stem in int8, the rest float32"
            cpu_features.check_cpu_int8()
        else:
            cpu_features.check_cpu_dtype(getattr(torch, precision))
    except ValueError:
        note += ("; this CPU has no int8 dot-product instructions (served: refused)" if note
                 else "emulated: this CPU has no native bfloat16")
    engine = load_engine(model_dir, "cpu", precision, 1, params)
    return Peer("ours", precision, engine.predict, note), engine


ORT_INT8_OPS = ("Conv", "MatMul", "Gemm")
"""What ONNX Runtime's int8 quantises (the embedding gathers stay float, as for OpenVINO)."""


def onnxruntime_peer(onnx_path: Path, precision: str, threads: int, pad_id: int,
                     calibration: Sequence[dict[str, np.ndarray]] = ()) -> Peer:
    """ONNX Runtime's CPU provider on the exported graph: float32, or int8 through its
    static post-training quantisation (QDQ, unsigned activations and signed per-channel
    weights as it advises for VNNI CPUs), calibrated on ``calibration``."""
    from ofa_ve_ops.export_onnx import network_inputs, ort_session

    note = ""
    if precision == "bfloat16":
        return Peer("onnxruntime", precision, None,
                    "not run: no bfloat16 inference mode in ONNX Runtime's x86 CPU provider")
    if precision == "int8":
        if not calibration:
            return Peer("onnxruntime", precision, None, "not run: no calibration items")
        from onnxruntime import quantization as q

        class Calibration(q.CalibrationDataReader):
            def __init__(self) -> None:
                self.inputs = iter(calibration)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.inputs, None)

        quantised = onnx_path.with_name(f"{onnx_path.stem}-int8.onnx")
        q.quantize_static(str(onnx_path), str(quantised), Calibration(),
                          quant_format=q.QuantFormat.QDQ,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          per_channel=True, op_types_to_quantize=list(ORT_INT8_OPS))
        onnx_path = quantised
        note = (f"static QDQ, {len(calibration)} calibration items; int8: "
                f"{', '.join(ORT_INT8_OPS)}")
    session = ort_session(onnx_path, threads)
    return Peer("onnxruntime", precision,
                lambda items: session.run(None, network_inputs(items, pad_id))[0], note)


OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16"}
"""The inference-precision hint per precision (int8 models run their float parts in f32)."""


DEFAULT_INT8_IGNORED = ("Gather",)
"""Operation types NNCF leaves in float: the embedding gathers (issue 27's recipe; NNCF
fails on the token embedding's Gather otherwise)."""


def openvino_peer(onnx_path: Path, precision: str, threads: int, pad_id: int,
                  calibration: Sequence[dict[str, np.ndarray]] = (),
                  int8_ignored: Sequence[str] = DEFAULT_INT8_IGNORED) -> Peer:
    """OpenVINO's CPU plugin on the exported graph, in latency mode; bfloat16 through
    its inference-precision hint where the CPU has bfloat16; int8 through NNCF's
    post-training quantisation (transformer mode, ``int8_ignored`` operation types left
    in float32), calibrated on ``calibration`` (the graph's inputs, one item each)."""
    import openvino as ov
    from ofa_ve_ops.export_onnx import network_inputs

    core, note = ov.Core(), ""
    model: Any = str(onnx_path)
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "bfloat16" and "BF16" not in capabilities:
        return Peer("openvino", precision, None, "not run: this CPU has no bfloat16")
    if precision == "int8":
        try:
            import nncf
        except ImportError:
            return Peer("openvino", precision, None, "not run: nncf is not installed")
        if not calibration:
            return Peer("openvino", precision, None, "not run: no calibration items")
        nncf.set_log_level(logging.ERROR)
        ignored = nncf.IgnoredScope(types=list(int8_ignored)) if int8_ignored else None
        model = nncf.quantize(core.read_model(str(onnx_path)), nncf.Dataset(list(calibration)),
                              model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calibration), ignored_scope=ignored)
        note = (f"NNCF post-training, transformer mode, {len(calibration)} calibration items; "
                f"in float32: {', '.join(int8_ignored) or 'nothing'}")
    config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION.get(precision, "f32"),
              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(model, "CPU", config)
    request, output = compiled.create_infer_request(), compiled.output(0)

    def run(items: Sequence[Any]) -> np.ndarray:
        return request.infer(network_inputs(items, pad_id))[output]

    return Peer("openvino", precision, run, note)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model-dir", type=Path, required=True, help="ModelScope model dir")
    add("--seconds", type=float, default=30.0, help="timed seconds per peer")
    add("--rounds", type=int, default=3, help="turns the peers take")
    add("--precisions", default="float32,bfloat16", help=f"comma-separated, of {PRECISIONS}")
    add("--items", type=int, default=12, help="distinct images (prepared)")
    add("--threads", type=int, default=0, help="threads of each (0: torch's)")
    add("--onnx", type=Path, help="an exported graph (default: export here)")
    add("--param", action="append", default=[], metavar="KEY=VALUE",
        help="config.pbtxt parameter for our engine")
    add("--int8-ignore", default=",".join(DEFAULT_INT8_IGNORED),
        help="OpenVINO operation types NNCF leaves in float32 for int8, comma-separated "
        "(e.g. Gather,Convolution: the transformer's matmuls alone)")
    add("--out", type=Path, default=Path("peers.json"), help="JSON results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    precisions = listed(args.precisions)
    if set(precisions) - set(PRECISIONS) or "float32" not in precisions:
        say(f"precisions are {PRECISIONS}, float32 among them")
        return 2
    precisions = sorted(set(precisions), key=PRECISIONS.index)  # float32 first
    import torch
    from ofa_ve_engine.parameters import parse_assignments
    from ofa_ve_ops import export_onnx

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    params = parse_assignments(args.param)
    texts = workload.LOAD_TEXTS
    work = [(image, *texts[i % len(texts)]) for i, image in
            enumerate(workload.distinct_jpegs(args.items))]
    ours_peers = [ours(args.model_dir, p, params) for p in precisions]
    engine = ours_peers[0][1]  # float32's: it prepares the items for every peer
    items = prepare_all(engine, work)
    pad_id = engine.tokenizer.pad_id
    with tempfile.TemporaryDirectory(prefix="ofa-ve-peers-") as tmp:
        onnx_path = args.onnx or Path(tmp) / "ofa_ve.onnx"
        if args.onnx is None:
            say("exporting the network and checking it with ONNX Runtime")
            try:
                export_onnx.export_checked(args.model_dir, onnx_path, items=items)
            except export_onnx.ExportError as e:
                say(str(e))
                return 1
        calibration = []
        if "int8" in precisions:
            say("int8: calibrating on the workload's test images")
            calibrating = prepare_all(engine, workload.items())
            calibration = [export_onnx.network_inputs([item], pad_id) for item in calibrating]
        peers = []
        for (peer, _), precision in zip(ours_peers, precisions, strict=True):
            peers += [peer, onnxruntime_peer(onnx_path, precision, threads, pad_id, calibration),
                      openvino_peer(onnx_path, precision, threads, pad_id, calibration,
                                    listed(args.int8_ignore))]
        described = machine.describe("cpu")
        rows = side_by_side(peers, items, seconds=args.seconds, rounds=args.rounds)
    results = {
        "machine": described.to_dict(),
        "load_average_after": machine.load_average(),
        "onnx": str(args.onnx or "exported by this run"),
        "threads": threads,
        "items": len(items),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "int8_ignored": args.int8_ignore,
        "model_dir": str(args.model_dir),
        "params": params,
        "versions": {name: machine.version(name, imported=False)
                     for name in ("torch", "onnxruntime", "openvino", "onnx", "numpy")},
        "rows": [asdict(row) for row in rows],
    }
    machine.report(results, markdown(rows, str(described)), args.out)
    failed = [r for r in rows if r.within_tolerance is False]
    for r in failed:
        say(f"{r.runtime} float32 differs from ours by {r.max_prob_diff:.3g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
