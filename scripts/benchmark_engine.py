#!/usr/bin/env python3
"""Engine throughput at several batch sizes beside ModelScope's pipeline, in one run.

Why a script and not a test: timings on shared machines are noisy, so they are
measured side by side and reported as ratios (docs/benchmarks.md), never asserted.

    .venv/bin/python scripts/benchmark_engine.py --model-dir DIR [--device cpu|cuda]
        [--batch-sizes 1,4,16,64] [--seconds 20] [--reference-calls 8] [--json OUT]

Images are the real encoded files under tests/data/images (decoded and resized
inside the timed region, as a server does); texts mix hypothesis-only and
premise+hypothesis prompts. (a) ModelScope's pipeline runs one call per item,
the only way it works; (b) the engine runs prepare + predict per batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "model_repository" / "ofa_visual_entailment" / "1"))
sys.path.insert(0, str(ROOT / "tests"))

TEXTS: list[tuple[str, str | None]] = [
    ("Two people are standing outside.", None),
    ("A cat sleeps on a red sofa.", None),
    ("The picture shows a rocket on the launch pad.", "A photo taken at a space center."),
    ("Somebody is drinking coffee.", None),
    ("There is no animal in the image.", "A close-up photo of an animal's face."),
    ("A woman wears a white space suit.", None),
]


@dataclass
class Measurement:
    name: str
    batch_size: int
    items: int
    seconds: float

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    def row(self) -> dict[str, float | int | str]:
        return {**asdict(self), "items_per_s": round(self.items_per_s, 3)}


def load_workload(images_dir: Path) -> list[tuple[Path, str, str | None]]:
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in {".jpg", ".png", ".webp"})
    if not paths:
        raise SystemExit(f"no images in {images_dir}")
    return [(p, *TEXTS[i % len(TEXTS)]) for i, p in enumerate(paths)]


def measure_engine(engine, workload, batch_size: int, seconds: float) -> Measurement:
    """prepare + predict of whole batches, repeated until ``seconds`` have passed."""
    blobs = [(p.read_bytes(), h, prem) for p, h, prem in workload]
    batch = [blobs[i % len(blobs)] for i in range(batch_size)]
    engine.predict([engine.prepare(*x) for x in batch])  # warm-up at this shape
    done, start = 0, time.perf_counter()
    while True:
        engine.predict([engine.prepare(*x) for x in batch])
        done += batch_size
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return Measurement("engine", batch_size, done, elapsed)


def measure_reference(model_dir: Path, workload, calls: int) -> Measurement:
    """ModelScope's own pipeline, one item per call (its batching is broken)."""
    from reference.modelscope_pipeline import build_pipeline, preserved_global_rngs

    with preserved_global_rngs():
        pipe = build_pipeline(model_dir)

        def call(i: int) -> None:
            path, hypothesis, premise = workload[i % len(workload)]
            inputs = {"image": str(path), "text": hypothesis}
            if premise is not None:
                inputs["text2"] = premise
            pipe(inputs)

        call(0)
        start = time.perf_counter()
        for i in range(calls):
            call(i)
        return Measurement("modelscope_pipeline", 1, calls, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="ModelScope model directory")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: GPU if any)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch-sizes", default="1,4,16,64", help="comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="time per engine batch size")
    parser.add_argument("--reference-calls", type=int, default=8, help="0 skips ModelScope")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--images", type=Path, default=ROOT / "tests" / "data" / "images")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch
    from ofa_ve_engine import VisualEntailmentEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    workload = load_workload(args.images)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    engine = VisualEntailmentEngine(
        args.model_dir,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        max_batch_size=max(sizes),
    )
    results = []
    if args.reference_calls:
        results.append(measure_reference(args.model_dir, workload, args.reference_calls))
        print(f"modelscope pipeline: {results[-1].items_per_s:.2f} items/s", flush=True)
    for size in sizes:
        results.append(measure_engine(engine, workload, size, args.seconds))
        print(f"engine batch {size:>3}: {results[-1].items_per_s:.2f} items/s", flush=True)

    reference = next((r for r in results if r.name == "modelscope_pipeline"), None)
    print(
        f"\nmachine: {platform.node()} {platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {engine.device}, dtype {args.dtype}"
    )
    print("| what | batch | items/s | vs ModelScope |\n| --- | --- | --- | --- |")
    for r in results:
        ratio = f"{r.items_per_s / reference.items_per_s:.2f}x" if reference else "-"
        print(f"| {r.name} | {r.batch_size} | {r.items_per_s:.2f} | {ratio} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": str(engine.device),
                    "dtype": args.dtype,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "results": [r.row() for r in results],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
