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

from ofa_ve_data import workload

from ofa_ve_bench import machine
from ofa_ve_bench.engine_runner import agreement
from ofa_ve_bench.results import listed

DEFAULT_DTYPES = {"cpu": ("bfloat16", "int8"), "cuda": ("float16", "bfloat16")}
"""float16 has no fast CPU kernels."""


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
    from ofa_ve_engine.settings import TaskSettings

    devices = listed(args.devices) or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    # Every image with every hypothesis, every other pair with a premise.
    work = workload.agreement_items("all", args.images)[: args.max_pairs or None]
    weights = "demo (random)" if TaskSettings.from_model_dir(args.model_dir).demo else "real"
    results = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": str(machine.describe(devices[-1])),
        "model_dir": str(args.model_dir),
        "comparisons": [],
    }
    failed = False
    for device in devices:
        dtypes = listed(args.dtypes) or DEFAULT_DTYPES[torch.device(device).type]
        print(f"{device}: against float32 over {len(work)} pairs ({weights} weights)")
        for row in agreement(args.model_dir, device, dtypes, work, batch_size=args.batch_size):
            results["comparisons"].append({**row, "weights": weights})
            failed |= row["label_agreement"] < args.min_agreement
            print(
                f"  {row['dtype']}: label agreement {row['label_agreement']:.2%} "
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
