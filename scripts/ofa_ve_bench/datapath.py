"""Measure the image data path: CPU ms per item and per step, today's route vs the new one.

Why: on a GPU host the CPU preprocessing, not the model, caps items/s. This
times each step of ``prepare``'s image work (decode, EXIF/convert copies,
bicubic resize to P) for today's all-Pillow route and for ``load_pixels``
(exact, and the opt-in ``fast`` DCT-scaled route), side by side in one run
(interleaved rounds, so a busy neighbour slows both alike), then items/s of
decode+resize on 1..N threads, and a 16-core GPU-host ceiling
(16 / CPU-seconds per item).

Usage: PYTHONPATH=scripts .venv/bin/python -m ofa_ve_bench.datapath [--out datapath.json]
Run it with OMP_NUM_THREADS=1. The text half of prepare (tokenizer) is not timed.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from ofa_ve_engine import jpeg
from ofa_ve_engine.image import (
    _resize_rgbx,
    decode_image,
    load_pixels,
    open_checked,
    resize_image,
    route_of,
)
from ofa_ve_engine.limits import InputLimits
from PIL import Image, ImageOps

from ofa_ve_bench import machine

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "tests" / "data" / "images"
SOURCE_PHOTO = "astronaut_640x480.jpg"
GPU_HOST_CORES = 16
LIMITS = InputLimits()


def cpu_model() -> str:
    """lscpu's model name (the figure means little without it)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def load_average() -> float:
    """The 1-minute load average: others share this machine."""
    return os.getloadavg()[0]


def make_inputs(source: Path) -> dict[str, bytes]:
    """The measured files: a real photo re-encoded at q90 in three sizes, plus a PNG."""
    photo = Image.open(source).convert("RGB")
    inputs: dict[str, bytes] = {}
    for width, height in ((640, 480), (1280, 960), (4000, 3000)):
        buffer = io.BytesIO()
        photo.resize((width, height), Image.Resampling.BICUBIC).save(
            buffer, format="JPEG", quality=90
        )
        inputs[f"jpeg_{width}x{height}"] = buffer.getvalue()
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    inputs["png_640x480"] = buffer.getvalue()
    return inputs


def today_steps(data: bytes, size: int) -> dict[str, Callable[[], object]]:
    """Each step of today's route as its own callable, fed the previous step's output."""
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    upright = ImageOps.exif_transpose(decoded)
    rgb = upright.convert("RGB")
    resized = rgb.resize((size, size), Image.Resampling.BICUBIC)

    def decode() -> object:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    return {
        "decode": decode,
        "exif_transpose": lambda: ImageOps.exif_transpose(decoded),
        "convert_rgb": lambda: upright.convert("RGB"),
        "resize": lambda: rgb.resize((size, size), Image.Resampling.BICUBIC),
        "to_numpy": lambda: np.asarray(resized, dtype=np.uint8),
    }


def new_steps(data: bytes, size: int) -> dict[str, Callable[[], object]]:
    """The exact route's steps (JPEGs only): header probe, simplejpeg decode, resize."""
    image = open_checked(data, LIMITS)
    plan = jpeg.plan(image)
    if not plan.ok:
        return {}
    rgbx = jpeg.decode_rgbx(data, plan)
    assert rgbx is not None
    return {
        "probe": lambda: jpeg.plan(open_checked(data, LIMITS)),
        "decode": lambda: jpeg.decode_rgbx(data, plan),
        "resize": lambda: _resize_rgbx(rgbx, size),  # frombytes + resize + to_numpy
    }


def cpu_ms(
    funcs: dict[str, Callable[[], object]], budget_s: float, rounds: int
) -> dict[str, float]:
    """CPU ms per call of each function, interleaved round by round.

    Returns the median (``name``) and the minimum (``name_min``): on a shared
    machine the minimum is the least disturbed round, the median the typical one.
    """
    reps: dict[str, int] = {}
    for name, func in funcs.items():
        start = time.process_time()
        func()
        once = max(time.process_time() - start, 1e-5)
        reps[name] = max(1, int(budget_s / rounds / once))
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, func in funcs.items():
            start = time.process_time()
            for _ in range(reps[name]):
                func()
            samples[name].append((time.process_time() - start) / reps[name] * 1e3)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    minima = {f"{name}_min": min(values) for name, values in samples.items()}
    return {**medians, **minima}


def items_per_s(
    func: Callable[[bytes], object], data: bytes, threads: int, seconds: float
) -> float:
    """Wall items/s of ``func`` on ``threads`` threads (Pillow and simplejpeg drop the GIL)."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(func, [data] * threads))  # warm up the threads
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            list(pool.map(func, [data] * (threads * 2)))
            done += threads * 2
        return done / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict[str, object]:
    """Every measurement, as one JSON-ready dict."""
    size = args.size
    inputs = make_inputs(IMAGES_DIR / SOURCE_PHOTO)
    results: dict[str, object] = {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "patch_size": size,
        "load_average_start": load_average(),
        "images": {},
    }

    def today(data: bytes) -> np.ndarray:
        return resize_image(decode_image(data, LIMITS), size)

    def exact(data: bytes) -> np.ndarray:
        return load_pixels(data, size, LIMITS)

    def fast(data: bytes) -> np.ndarray:
        return load_pixels(data, size, LIMITS, fast=True)

    for name, data in inputs.items():
        if args.only and name not in args.only:
            continue
        reference = today(data)
        record: dict[str, object] = {
            "bytes": len(data),
            "route_exact": route_of(data, size, LIMITS),
            "route_fast": route_of(data, size, LIMITS, fast=True),
            "exact_bit_identical": bool(np.array_equal(reference, exact(data))),
            "fast_max_abs_diff": int(
                np.abs(fast(data).astype(np.int16) - reference.astype(np.int16)).max()
            ),
        }
        budget = args.budget * (3 if "4000" in name else 1)
        totals = cpu_ms(
            {
                "today": lambda d=data: today(d),
                "exact": lambda d=data: exact(d),
                "fast": lambda d=data: fast(d),
            },
            budget,
            args.rounds,
        )
        record["total_ms"] = totals
        record["load_average_totals"] = load_average()
        record["steps_today_ms"] = cpu_ms(today_steps(data, size), budget, args.rounds)
        record["steps_new_ms"] = cpu_ms(new_steps(data, size), budget, args.rounds)
        record["ratio_exact"] = totals["today"] / totals["exact"]
        record["ratio_fast"] = totals["today"] / totals["fast"]
        record["ratio_exact_min"] = totals["today_min"] / totals["exact_min"]
        record["ratio_fast_min"] = totals["today_min"] / totals["fast_min"]
        record["ceiling_items_per_s_16_cores"] = {
            path: GPU_HOST_CORES / (totals[path] / 1e3) for path in ("today", "exact", "fast")
        }
        scaling: dict[str, dict[int, float]] = {"today": {}, "exact": {}, "fast": {}}
        for threads in range(1, args.threads + 1):
            for path, func in (("today", today), ("exact", exact), ("fast", fast)):
                scaling[path][threads] = items_per_s(func, data, threads, args.scaling_s)
        record["threads_items_per_s"] = scaling
        record["load_average_end"] = load_average()
        results["images"][name] = record  # type: ignore[index]
        print(f"measured {name} (load {load_average():.2f})", flush=True)
    results["load_average_end"] = load_average()
    return results


def markdown(results: dict[str, object]) -> str:
    """The report's tables."""
    images: dict[str, dict] = results["images"]  # type: ignore[assignment]
    lines = [
        f"CPU: {results['cpu_model']} ({results['cpus']} CPUs visible), "
        f"OMP_NUM_THREADS={results['omp_num_threads']}, P={results['patch_size']}, "
        f"load average {results['load_average_start']:.2f} -> {results['load_average_end']:.2f}",
        "",
        "| image | route (exact) | today ms | exact ms | fast ms | exact x | fast x "
        "| exact x (min) | fast x (min) | bit-identical | fast max diff | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, r in images.items():
        t = r["total_ms"]
        lines.append(
            f"| {name} | {r['route_exact']} | {t['today']:.2f} | {t['exact']:.2f} | "
            f"{t['fast']:.2f} | {r['ratio_exact']:.2f} | {r['ratio_fast']:.2f} | "
            f"{r['ratio_exact_min']:.2f} | {r['ratio_fast_min']:.2f} | "
            f"{r['exact_bit_identical']} | {r['fast_max_abs_diff']} | "
            f"{r['load_average_totals']:.2f} |"
        )
    lines += ["", "Per step, CPU ms per item (median of interleaved rounds):", ""]
    lines += [
        "| image | today: decode / exif / convert / resize / numpy | new: probe / decode / "
        "resize (incl. numpy) |",
        "|---|---|---|",
    ]
    for name, r in images.items():
        s, n = r["steps_today_ms"], r["steps_new_ms"]
        today = " / ".join(
            f"{s[k]:.2f}" for k in ("decode", "exif_transpose", "convert_rgb", "resize", "to_numpy")
        )
        new = " / ".join(f"{n[k]:.2f}" for k in ("probe", "decode", "resize")) if n else "(Pillow)"
        lines.append(f"| {name} | {today} | {new} |")
    lines += [
        "",
        f"{GPU_HOST_CORES}-core GPU-host ceiling, decode+resize only "
        f"(items/s = {GPU_HOST_CORES} / CPU-s per item):",
        "",
        "| image | today | exact | fast |",
        "|---|---:|---:|---:|",
    ]
    for name, r in images.items():
        c = r["ceiling_items_per_s_16_cores"]
        lines.append(f"| {name} | {c['today']:.0f} | {c['exact']:.0f} | {c['fast']:.0f} |")
    lines += ["", "Thread scaling, wall items/s of decode+resize (ThreadPoolExecutor):", ""]
    first = next(iter(images.values()))
    counts = list(first["threads_items_per_s"]["today"])
    lines += [
        "| image | path | " + " | ".join(f"{n} thr" for n in counts) + " |",
        "|---|---|" + "---:|" * len(counts),
    ]
    for name, r in images.items():
        for path, per in r["threads_items_per_s"].items():
            lines.append(
                f"| {name} | {path} | " + " | ".join(f"{per[n]:.1f}" for n in counts) + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=480, help="patch size P (480 for OFA)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per timing")
    parser.add_argument("--budget", type=float, default=1.5, help="CPU-s per timed function")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scaling-s", type=float, default=1.5, help="wall s per thread count")
    parser.add_argument("--only", nargs="*", help="image names to measure (default: all)")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    results = run(args)
    machine.report(results, markdown(results), args.out)


if __name__ == "__main__":
    main()
