"""The engine in float32 and in reduced types, side by side in one run.

Why: whether `dtype: bfloat16` pays on a CPU depends on the CPU (native bfloat16
or emulated), so the ratio must be measured where it will run, with the rounds
interleaved so that load changes hit every type alike. Each round measures
prepare + predict of whole batches (what one server execution does) for each
type in turn; the report gives items/s per type and each type's ratio to float32
within each round, then the median. `--compare NAME=VALUE` adds, for every type,
an engine with that config parameter changed (e.g. `stem_backend=aten`), so that
an engine option is measured the same way, beside its default.

    .venv/bin/python -m ofa_ve_bench.dtype_speed --model-dir DIR [--dtypes bfloat16]
        [--compare NAME=VALUE ...] [--batch-size 1] [--seconds 8] [--rounds 3]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ofa_ve_bench import machine, workload
from ofa_ve_bench.engine_runner import build_engine, measure_engine, validated_params


def variants(dtypes: Sequence[str], compare: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Engine name -> config parameters: float32 first, then each type; after each,
    the same with every `compare` override ("float32 stem_backend=aten")."""
    out: dict[str, dict[str, str]] = {}
    for dtype in ["float32", *[d for d in dtypes if d != "float32"]]:
        out[dtype] = {"dtype": dtype}
        for name, value in compare.items():
            out[f"{dtype} {name}={value}"] = {"dtype": dtype, name: value}
    return out


def measure(
    model_dir: Path,
    dtypes: Sequence[str],
    batch_size: int,
    seconds: float,
    rounds: int,
    compare: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    items = workload.items(formats="jpeg", seed=0)
    configs = variants(dtypes, compare or {})
    names = list(configs)
    engines = {
        name: build_engine(model_dir, "cpu", params, forward_batch_size=batch_size)[0]
        for name, params in configs.items()
    }
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        per_round.append(
            {
                name: measure_engine(engine, items, batch_size, seconds).items_per_s
                for name, engine in engines.items()
            }
        )
    return {
        "batch_size": batch_size,
        "rounds": per_round,
        "items_per_s": {n: statistics.median(r[n] for r in per_round) for n in names},
        "ratio_to_float32": {
            n: statistics.median(r[n] / r["float32"] for r in per_round) for n in names[1:]
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--dtypes", default="bfloat16", help="comma-separated, besides float32")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also run each type with this config parameter changed (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="items per forward pass")
    parser.add_argument("--seconds", type=float, default=8.0, help="per type per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    try:
        compare = validated_params(args.compare)  # names a bad parameter or value
    except ValueError as e:
        parser.error(str(e))
    results = measure(args.model_dir, dtypes, args.batch_size, args.seconds, args.rounds, compare)
    results["machine"] = machine.describe().to_dict()
    lines = [f"batch {args.batch_size}, median of {args.rounds} interleaved rounds:"]
    for name, rate in results["items_per_s"].items():
        ratio = results["ratio_to_float32"].get(name)
        lines.append(
            f"  {name:<28} {rate:7.2f} items/s" + (f"  {ratio:.2f}x float32" if ratio else "")
        )
    machine.report(results, "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
