"""How far the non-exact image routes move pixels and answers from the exact route.

Why: ``load_pixels(fast=True)`` (DCT-scaled JPEG decode) and the GPU image path
(``gpu_image.load_pixels_gpu``: nvJPEG + torch antialiased bicubic) trade
bit-identity for CPU; this puts numbers on the trade. Over every test image
plus large generated JPEGs, times many hypotheses (>= 200 pairs), it reports
the largest pixel difference, label agreement and the largest probability
difference of (a) the fast route and (b) the GPU path run on CPU tensors
(device="cpu": same code, torchvision's libjpeg-turbo decode instead of
nvJPEG), each against the exact route. It also checks that the exact route
equals today's Pillow route (it must: 0 everywhere).

The model is a DECISIVE random checkpoint (``write_demo_checkpoint(...,
decisive=True)``): plain random weights answer almost uniformly, so any label
comparison on them measures noise.

Usage: PYTHONPATH=scripts .venv/bin/python -m ofa_ve_bench.image_fidelity [--out f.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.gpu_image import load_pixels_gpu
from ofa_ve_engine.image import decode_image, load_pixels, resize_image, route_of
from ofa_ve_engine.limits import InputLimits
from PIL import Image

from ofa_ve_bench import machine

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "tests" / "data" / "images"
LIMITS = InputLimits()

HYPOTHESES: tuple[str, ...] = (
    "A woman in an orange suit is smiling.",
    "There are two birds.",
    "A cat with green eyes looks at the camera.",
    "The man is holding a camera.",
    "An astronaut poses in front of a flag.",
    "The cup is on a wooden table.",
    "A rocket stands on its launch pad.",
    "Coins lie on a dark table.",
    "Nobody is in the picture.",
    "Two people are playing soccer.",
    "A dog sleeps on a sofa.",
    "The sky is blue.",
    "Is this a photograph taken at night?",
    "A café serves crème brûlée.",
)

GENERATED: tuple[tuple[str, tuple[int, int], int], ...] = (
    ("astronaut_640x480.jpg", (1280, 960), 0),
    ("astronaut_640x480.jpg", (2560, 1920), 0),
    ("astronaut_640x480.jpg", (4000, 3000), 0),
    ("chelsea_300x500.jpg", (2400, 4000), 0),
    ("rocket_1024x256.jpg", (4096, 1024), 0),
    ("coffee_exif_orientation6.jpg", (3200, 2400), 6),
)
"""(source, size, EXIF orientation): large q90 JPEGs upscaled from the test photos."""


def make_large(source: str, size: tuple[int, int], orientation: int) -> bytes:
    """An upscaled, re-encoded (q90) copy of a test photo, optionally EXIF-rotated."""
    photo = Image.open(IMAGES_DIR / source).convert("RGB")
    buffer = io.BytesIO()
    kwargs: dict[str, object] = {"quality": 90}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    photo.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def inputs() -> dict[str, bytes]:
    """Every test image file, then the generated large JPEGs."""
    found = {path.name: path.read_bytes() for path in sorted(IMAGES_DIR.iterdir())}
    for source, (w, h), orientation in GENERATED:
        name = f"{Path(source).stem}_{w}x{h}{f'_exif{orientation}' if orientation else ''}.jpg"
        found[name] = make_large(source, (w, h), orientation)
    return found


def decisive_checkpoint(out: Path, seed: int) -> tuple[Path, str]:
    """A decisive random checkpoint, and how it was made (reported with the results)."""
    from ofa_ve_engine import demo_checkpoint

    try:
        path = demo_checkpoint.write_demo_checkpoint(out, seed=seed, decisive=True)
        return path, f"write_demo_checkpoint(seed={seed}, decisive=True)"
    except TypeError:  # an older writer without `decisive`: scale by hand, labelled as such
        path = demo_checkpoint.write_demo_checkpoint(out, seed=seed)
        weights = path / "pytorch_model.bin"
        state = torch.load(weights, weights_only=True)
        for key in state:
            if key.endswith("embed_tokens.weight"):
                state[key] = state[key] * 8.0  # the shared output projection
        torch.save(state, weights)
        return path, f"write_demo_checkpoint(seed={seed}) with embed_tokens scaled x8 here"


def pixel_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Largest and mean absolute difference of two uint8 images."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max": int(diff.max()), "mean": float(diff.mean())}


def run(args: argparse.Namespace) -> dict[str, object]:
    """Pixels of every route per image, then probabilities for every image x hypothesis."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, how = (
            (Path(args.model_dir), "given --model-dir")
            if args.model_dir
            else decisive_checkpoint(Path(tmp) / "decisive", args.seed)
        )
        engine = VisualEntailmentEngine.from_model_dir(model_dir, device="cpu")
        size = engine.settings.patch_image_size
        placeholder = io.BytesIO()
        Image.new("RGB", (8, 8)).save(placeholder, format="PNG")
        text_items = [engine.prepare(placeholder.getvalue(), h) for h in HYPOTHESES]

        per_image: dict[str, dict[str, object]] = {}
        routes: dict[str, list] = {"reference": [], "exact": [], "fast": [], "gpu_cpu": []}
        same: dict[str, list[bool]] = {key: [] for key in routes}
        images = inputs()
        for name, data in images.items():
            reference = resize_image(decode_image(data, LIMITS), size)
            exact = load_pixels(data, size, LIMITS)
            fast = load_pixels(data, size, LIMITS, fast=True)
            gpu = load_pixels_gpu([data], size, LIMITS, device="cpu")[0].numpy()
            per_image[name] = {
                "route_exact": route_of(data, size, LIMITS),
                "route_fast": route_of(data, size, LIMITS, fast=True),
                "exact_vs_reference": pixel_stats(exact, reference),
                "fast_vs_exact": pixel_stats(fast, exact),
                "gpu_cpu_vs_exact": pixel_stats(gpu, exact),
            }
            for key, pixels in (
                ("reference", reference),
                ("exact", exact),
                ("fast", fast),
                ("gpu_cpu", gpu),
            ):
                routes[key].extend(dataclasses.replace(t, pixels=pixels) for t in text_items)
                equal = key != "exact" and bool(np.array_equal(pixels, exact))
                same[key].extend([equal] * len(text_items))
            print(f"pixels: {name}", flush=True)
        # Items whose pixels equal the exact route's have its probabilities by
        # construction (same network input): only the differing ones are run.
        probs = {"exact": engine.predict(routes["exact"])}
        for key in ("reference", "fast", "gpu_cpu"):
            assert len(same[key]) == len(routes[key])
            todo = [i for i, equal in enumerate(same[key]) if not equal]
            out = probs["exact"].copy()
            if todo:
                out[todo] = engine.predict([routes[key][i] for i in todo])
            probs[key] = out
            print(f"predicted {key}: {len(todo)} items ran", flush=True)

    names = [name for name in images for _ in HYPOTHESES]
    exact = probs["exact"]
    summary: dict[str, dict[str, object]] = {}
    for key in ("reference", "fast", "gpu_cpu"):
        other = probs[key]
        agree = other.argmax(1) == exact.argmax(1)
        diff = np.abs(other - exact).max(1)
        worst = int(diff.argmax())
        summary[key] = {
            "pairs": len(names),
            "label_agreement": float(agree.mean()),
            "labels_changed": int((~agree).sum()),
            "max_prob_diff": float(diff.max()),
            "worst_pair": f"{names[worst]} / {HYPOTHESES[worst % len(HYPOTHESES)]}",
            "max_pixel_diff": max(
                per_image[n][
                    f"{'exact_vs_reference' if key == 'reference' else key + '_vs_exact'}"
                ]["max"]
                for n in images
            ),
        }
    margins = np.sort(exact, 1)
    return {
        "checkpoint": how,
        "patch_size": size,
        "pairs": len(names),
        "labels_exact": {str(i): int((exact.argmax(1) == i).sum()) for i in range(3)},
        "median_top1_margin_exact": float(np.median(margins[:, -1] - margins[:, -2])),
        "summary": summary,
        "images": per_image,
        "cpu_count": os.cpu_count(),
    }


def markdown(results: dict[str, object]) -> str:
    """The report's tables."""
    summary: dict[str, dict] = results["summary"]  # type: ignore[assignment]
    lines = [
        f"Checkpoint: {results['checkpoint']}; {results['pairs']} image/hypothesis pairs; "
        f"exact-route labels {results['labels_exact']}; median top-1 margin "
        f"{results['median_top1_margin_exact']:.3f}.",
        "",
        "| vs exact route | largest pixel diff | label agreement | labels changed "
        "| largest prob diff | worst pair |",
        "|---|---:|---:|---:|---:|---|",
    ]
    titles = {
        "reference": "today's Pillow route",
        "fast": "(a) fast=True (DCT-scaled)",
        "gpu_cpu": "(b) GPU path, on CPU tensors",
    }
    for key, s in summary.items():
        lines.append(
            f"| {titles[key]} | {s['max_pixel_diff']} | {s['label_agreement']:.4f} | "
            f"{s['labels_changed']} | {s['max_prob_diff']:.2e} | "
            f"{s['worst_pair'] if s['max_prob_diff'] > 0 else '-'} |"
        )
    lines += [
        "",
        "| image | route (exact) | route (fast) | fast max/mean | GPU-on-CPU max/mean |",
        "|---|---|---|---|---|",
    ]
    images: dict[str, dict] = results["images"]  # type: ignore[assignment]
    for name, r in images.items():
        f, g = r["fast_vs_exact"], r["gpu_cpu_vs_exact"]
        lines.append(
            f"| {name} | {r['route_exact']} | {r['route_fast']} | {f['max']} / {f['mean']:.3f} "
            f"| {g['max']} / {g['mean']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=4, help="demo checkpoint seed")
    parser.add_argument("--model-dir", help="use this model directory instead")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    results = run(args)
    machine.report(results, markdown(results), args.out)


if __name__ == "__main__":
    main()
