#!/usr/bin/env python3
"""Write a random-weight OFA-tiny checkpoint in ModelScope's model-directory layout.

Used where the real model cannot be downloaded (`make serve` without hub access,
the test suite, benchmarks). The same seed always gives byte-identical files.

    python -m ofa_ve_ops.make_demo_checkpoint [--out DIR] [--seed N] [--decisive]

Without --out it goes where `make serve` looks for it: $OFA_VE_CACHE_DIR (else
.cache/) /demo-checkpoint-seed<N> (a decisive one: ...-seed<N>-decisive).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from ofa_ve_engine.demo_checkpoint import (
    DEFAULT_SEED,
    checkpoint_files,
    write_demo_checkpoint,
)

from ofa_ve_ops.paths import demo_checkpoint_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Write a random-weight OFA-tiny visual-entailment checkpoint in exactly "
            "ModelScope's layout (configuration.json, config.json, pytorch_model.bin, "
            "vocab.json, merges.txt, answer2label.json). Its answers are meaningless: "
            "it exists so the server and tests run where the ModelScope hub is unreachable."
        )
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="model directory to write (default: where `make serve` looks, "
        "$OFA_VE_CACHE_DIR or .cache/, demo-checkpoint-seed<SEED>)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"weight seed (default {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--decisive",
        action="store_true",
        help="confident, varied answers like a trained model's (large margins, all three "
        "labels): the checkpoint precision and fidelity comparisons are measured on",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only the directory, no file hashes"
    )
    args = parser.parse_args(argv)
    out = args.out
    if out is None:
        out = demo_checkpoint_dir(args.seed)
        out = out.with_name(out.name + "-decisive") if args.decisive else out
    out = write_demo_checkpoint(out, seed=args.seed, decisive=args.decisive)
    if not args.quiet:
        for path in checkpoint_files(out):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            print(f"{digest}  {path.name}  ({path.stat().st_size} bytes)", file=sys.stderr)
        kind = "decisive, " if args.decisive else ""
        print(f"demo checkpoint (RANDOM WEIGHTS, {kind}seed {args.seed}) written", file=sys.stderr)
    print(out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
