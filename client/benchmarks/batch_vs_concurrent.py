#!/usr/bin/env python3
"""How should predict_batch send N items: few big requests, or many small ones at once?

Times VisualEntailmentClient.predict_batch over the same items with several
(batch_size, concurrency) pairs against a running server and prints a
Markdown table (items/s, median of --repeats runs). The client's defaults,
and why, are in docs/client.md ("Few big requests or many small ones?").

    python client/benchmarks/batch_vs_concurrent.py --url 127.0.0.1:8001 --items 64
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

from ofa_ve_client import Item, VisualEntailmentClient

REPO_IMAGES = Path(__file__).resolve().parents[2] / "tests" / "data" / "images"
SENTENCES = (
    "A woman in an orange suit is smiling.",
    "There are two birds.",
    "A cat looks at the camera.",
    "A cup of coffee stands on a table.",
    "A rocket is on its launch pad.",
)


def load_images(folder: Path | None, n: int) -> list[bytes]:
    """Encoded images to send: files from `folder`, else generated noise PNGs."""
    if folder is not None and folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
        if files:
            return [files[i % len(files)].read_bytes() for i in range(n)]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(min(n, 8)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (320, 480, 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return [out[i % len(out)] for i in range(n)]


def parse_pairs(text: str) -> list[tuple[int | None, int]]:
    """'max:1,8:8,1:64' -> [(None, 1), (8, 8), (1, 64)]; 'max' is the model's max_batch_size."""
    pairs = []
    for part in text.split(","):
        size, _, conc = part.partition(":")
        pairs.append((None if size == "max" else int(size), int(conc)))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--pairs",
        default="max:1,max:2,16:4,8:8,4:16,1:32,1:64",
        help="batch_size:concurrency pairs to try (default: %(default)s)",
    )
    parser.add_argument("--images", type=Path, default=REPO_IMAGES)
    args = parser.parse_args()

    images = load_images(args.images, args.items)
    items = [Item(img, SENTENCES[i % len(SENTENCES)]) for i, img in enumerate(images)]
    with VisualEntailmentClient(args.url, timeout=600) as client:
        client.wait_until_ready(60)
        max_size = client.max_batch_size()
        client.predict_batch(items[: min(len(items), max_size)])  # warm-up
        pairs = [(size or max_size, conc, size is None) for size, conc in parse_pairs(args.pairs)]
        # Interleaved rounds: a load change on a shared machine hits every pair alike.
        times: dict[int, list[float]] = {i: [] for i in range(len(pairs))}
        for _ in range(args.repeats):
            for i, (size, concurrency, _) in enumerate(pairs):
                started = time.perf_counter()
                client.predict_batch(items, batch_size=size, concurrency=concurrency)
                times[i].append(time.perf_counter() - started)
        print(f"{args.items} items, max_batch_size {max_size}, {args.repeats} interleaved rounds\n")
        print("| batch_size | concurrency | requests | median s | best s | items/s (median) |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for i, (size, concurrency, is_max) in enumerate(pairs):
            median = statistics.median(times[i])
            requests = -(-len(items) // size)
            label = f"{size} (max)" if is_max else str(size)
            print(
                f"| {label} | {concurrency} | {requests} | {median:.2f} | {min(times[i]):.2f} | "
                f"{len(items) / median:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
