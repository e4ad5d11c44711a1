#!/usr/bin/env python3
"""How far float16 / bfloat16 / int8 inference moves the answers from float32.

Why: a reduced type is only worth its speed if the labels stay the same. This runs the
same image/text pairs through the engine in float32 and in each reduced dtype, on each
device (the float32 reference on the same device, TF32 off), and reports label agreement
and the largest probability difference. A flip on a near-tie means little, one on a clear
answer a lot, so each flip is listed with its float32 margin (top minus runner-up). A
random-weight demo checkpoint's answers are mostly near-ties: run it on the real weights.

    .venv/bin/python -m ofa_ve_bench.precision_agreement --model-dir DIR \\
        [--devices cpu,cuda] [--dtypes bfloat16,float16] [--json OUT] [--min-agreement 0.995]

Defaults: bfloat16 and int8 on CPU (int8 is `quantization int8`: the int8 stem under a
float32 network), float16 and bfloat16 on GPUs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ofa_ve_data import workload

from ofa_ve_bench import machine

DEFAULT_DTYPES = {"cpu": ("bfloat16", "int8"), "cuda": ("float16", "bfloat16")}
"""float16 has no fast CPU kernels."""
PRECISION_PARAMS = {"int8": {"dtype": "float32", "quantization": "int8"}}
"""The config.pbtxt parameters of a precision that is not a dtype name."""


def load_engine(model_dir: Path, device: str, dtype: str, batch_size: int):
    """The engine in `dtype` (or `int8`) on `device`, forward passes of up to `batch_size`
    items."""
    from ofa_ve_bench.engine_runner import build_engine

    params = PRECISION_PARAMS.get(dtype, {"dtype": dtype})
    return build_engine(model_dir, device, params, forward_batch_size=batch_size)


def run(engine, items: list, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [engine.predict(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    )


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, object]:
    """Label agreement and probability differences of ``other`` against ``reference``."""
    ref_labels, labels = reference.argmax(1), other.argmax(1)
    ordered = np.sort(reference, axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    diff = np.abs(reference - other).max(axis=1)
    flips = np.flatnonzero(ref_labels != labels)
    clear = margins > 0.05
    return {
        "pairs": len(reference),
        "label_agreement": round(float((ref_labels == labels).mean()), 5),
        "max_prob_diff": float(diff.max()),
        "mean_prob_diff": float(diff.mean()),
        "flips": len(flips),
        "flip_margins_fp32": [round(float(margins[i]), 5) for i in flips],
        "pairs_with_margin_over_0.05": int(clear.sum()),
        "agreement_margin_over_0.05": (
            round(float((ref_labels[clear] == labels[clear]).mean()), 5) if clear.any() else None
        ),
        "median_fp32_margin": round(float(np.median(margins)), 5),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--devices", default="", help="comma-separated (default: all available)")
    parser.add_argument("--dtypes", default="", help="comma-separated (default: per device)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=Path, default=workload.IMAGES_DIR)
    parser.add_argument("--max-pairs", type=int, default=0, help="use the first N pairs only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--min-agreement", type=float, default=0.0, help="exit 1 if any agreement is below this"
    )
    args = parser.parse_args(argv)

    import torch

    devices = [d for d in args.devices.split(",") if d] or (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    )
    # Every image with every hypothesis, every other pair with a premise.
    work = workload.agreement_items("all", args.images)[: args.max_pairs or None]
    results = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": str(machine.describe(devices[-1])),
        "model_dir": str(args.model_dir),
        "comparisons": [],
    }
    # float32 means float32: no TF32 in the reference.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    failed = False
    for device in devices:
        kind = torch.device(device).type
        dtypes = [d for d in args.dtypes.split(",") if d] or list(DEFAULT_DTYPES[kind])
        engine = load_engine(args.model_dir, device, "float32", args.batch_size)
        items = [engine.prepare(image, h, prem or None) for image, h, prem in work]
        reference = run(engine, items, args.batch_size)
        weights = "demo (random)" if engine.is_demo else "real"
        print(f"{device}: float32 reference over {len(items)} pairs ({weights} weights)")
        del engine
        for name in dtypes:
            engine = load_engine(args.model_dir, device, name, args.batch_size)
            row = {"device": device, "dtype": name, "weights": weights}
            row.update(compare(reference, run(engine, items, args.batch_size)))
            del engine
            results["comparisons"].append(row)
            failed |= row["label_agreement"] < args.min_agreement
            print(
                f"  {name}: label agreement {row['label_agreement']:.2%} "
                f"({row['flips']} flips of {row['pairs']}; fp32 margins of the flips "
                f"{row['flip_margins_fp32'][:8]}), max |dp| {row['max_prob_diff']:.2e}, "
                f"agreement where fp32 margin > 0.05: {row['agreement_margin_over_0.05']} "
                f"({row['pairs_with_margin_over_0.05']} pairs)",
                flush=True,
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
