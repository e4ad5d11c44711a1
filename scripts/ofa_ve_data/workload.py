"""The one workload: the test images and texts every test, benchmark and check sends.

Why one module: the soak, the perf_analyzer sweep, the side-by-side benchmark, the
precision check and the GPU check used to write out their own lists of images and
sentences, so "the same work" meant something different in each. Here are the
images (real photographs re-encoded by `tests/data/make_images.py`, sources and
licences documented there), the sentences, and the functions that turn them into
(image bytes, hypothesis, premise) items for a given count, seed and set of formats.

Each test image exercises one thing a decoder can get wrong: aspect ratio, tiny or
exact-size images, EXIF orientation, alpha, gray, palette, CMYK, and the other
formats the server accepts.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

from ofa_ve_ops.paths import REPO_ROOT

IMAGES_DIR = REPO_ROOT / "tests" / "data" / "images"

TEST_IMAGES: dict[str, Path] = {
    # JPEG
    "landscape_640x480_jpeg": IMAGES_DIR / "astronaut_640x480.jpg",
    "portrait_300x500_progressive_jpeg": IMAGES_DIR / "chelsea_300x500.jpg",
    "wide_1024x256_jpeg": IMAGES_DIR / "rocket_1024x256.jpg",
    "square_480x480_jpeg_444": IMAGES_DIR / "astronaut_480x480.jpg",
    "exif_orientation6_400x300_jpeg": IMAGES_DIR / "coffee_exif_orientation6.jpg",
    "cmyk_240x160_jpeg": IMAGES_DIR / "chelsea_cmyk.jpg",
    # PNG
    "tiny_50x40_png": IMAGES_DIR / "coffee_50x40.png",
    "gray_256x256_png": IMAGES_DIR / "camera_gray_256.png",
    "rgba_200x164_png": IMAGES_DIR / "chelsea_horse_rgba.png",
    "palette_192x152_png": IMAGES_DIR / "coins_palette.png",
    # Other formats the server accepts
    "webp_320x214": IMAGES_DIR / "rocket_320x214.webp",
    "bmp_120x80": IMAGES_DIR / "coffee_120x80.bmp",
    "gif_2frames_96x64": IMAGES_DIR / "chelsea_coffee_2frames.gif",
}
"""Name -> path of every test image."""

JPEG_AND_PNG: tuple[str, ...] = tuple(
    name for name, path in TEST_IMAGES.items() if path.suffix in (".jpg", ".png")
)

EXIF_IMAGE = "exif_orientation6_400x300_jpeg"
"""Stored 400x300 with EXIF Orientation 6: displayed (and judged) as 300x400."""

HYPOTHESES: tuple[str, ...] = (
    "There are two BIRDS.",
    "A woman in an orange suit is smiling.",
    "   a cat    with green   eyes  ",
    "...the man is holding a camera!",
    "A well-known astronaut poses in front of a flag.",
    "The cup/saucer is on a wooden table",
    "<person> is sitting on a bench.",
    "Is this a dog?",
    "NO ONE IS HERE",
    "A rocket on its launch-pad at night/day, under a blue sky.",
    "#1: the coffee is hot; very hot~",
    "Two people, a boy and a girl, are playing soccer.",
    "A cat's face looks at the camera.",
    "Coins lie on a dark table.",
    "tab\tseparated words and a trailing newline\n",
    "A café serves crème brûlée.",
)
"""Hypotheses exercising case, punctuation (leading and inner), hyphens, slashes,
`<person>`, runs of whitespace, tabs/newlines and non-ASCII text (the parity tests)."""

PREMISES: tuple[str, ...] = (
    "A woman wearing an orange space suit.",
    "A CAT looks straight at the camera.",
    "Coffee is served in a red cup/saucer.",
    "!!A rocket stands on the launch-pad, ready.",
    "<person> holds a camera on a tripod.",
)
"""Text premises (ModelScope's `text2`): case, leading punctuation, hyphen, slash."""

LONG_HYPOTHESIS = " ".join(["a big red dog runs"] * 70)
"""350 words: longer than OFA's 256-word / 256-token source limit (truncated)."""

LOAD_TEXTS: tuple[tuple[str, str], ...] = (
    ("Two people are standing outside.", ""),
    ("A cat sleeps on a red sofa.", "A close-up photo of an animal's face."),
    ("The picture shows a rocket on the launch pad.", ""),
    ("Somebody is drinking coffee.", "A cup stands on a saucer on a table."),
    ("There is no animal in the image.", ""),
    ("A woman wears a white space suit.", "An official portrait of an astronaut."),
)
"""(hypothesis, premise) of the load tests and benchmarks; "" = no premise. Every other
item has one, so as the list wraps every image meets prompts with and without."""

AGREEMENT_HYPOTHESES: tuple[str, ...] = (
    *(h for h, _ in LOAD_TEXTS),
    "The animal has green eyes.",
    "Coins lie on a dark table.",
    "A man is holding a camera.",
    "It is night and the sky is dark.",
    "The cup is empty.",
    "A horse stands next to a cat.",
    "Nobody is in the picture.",
    "The photo was taken indoors.",
    "Something is about to fly.",
    "The image is black and white.",
    "A flag can be seen behind the person.",
)
"""The precision comparisons' hypotheses: every image meets each of them."""

AGREEMENT_PREMISES: tuple[str, ...] = (
    "A photo taken at a space center.",
    "A close-up photo of an animal's face.",
    "A cup stands on a saucer on a table.",
    "An old photograph of a photographer in a park.",
)

FORMATS: dict[str, tuple[str, ...]] = {
    "jpeg": (".jpg", ".jpeg"),
    "all": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"),
}
"""`formats` values: which file suffixes of IMAGES_DIR a workload uses."""

Item = tuple[bytes, str, str]
"""(encoded image, hypothesis, premise); premise "" means the image alone."""


def image_paths(formats: str = "all", images_dir: Path = IMAGES_DIR) -> list[Path]:
    """The encoded test images of these formats, sorted by file name."""
    suffixes = FORMATS[formats]
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in suffixes)
    if not paths:
        raise ValueError(f"no {formats} images ({', '.join(suffixes)}) in {images_dir}")
    return paths


def path_items(
    count: int = 0, formats: str = "all", images_dir: Path = IMAGES_DIR
) -> list[tuple[Path, str, str]]:
    """(image path, hypothesis, premise) items cycling through images and LOAD_TEXTS.

    ``count`` items (0: as many as the longer of the two lists). ModelScope's pipeline
    reads files, so the benchmark needs the paths; everything else wants `items`.
    """
    images = image_paths(formats, images_dir)
    count = count or max(len(images), len(LOAD_TEXTS))
    return [(images[i % len(images)], *LOAD_TEXTS[i % len(LOAD_TEXTS)]) for i in range(count)]


def items(
    count: int = 0,
    formats: str = "all",
    seed: int | None = None,
    images_dir: Path = IMAGES_DIR,
) -> list[Item]:
    """``path_items`` with the encoded bytes; ``seed`` shuffles the order reproducibly."""
    out = [(p.read_bytes(), h, prem) for p, h, prem in path_items(count, formats, images_dir)]
    if seed is not None:
        random.Random(seed).shuffle(out)
    return out


def agreement_items(formats: str = "all", images_dir: Path = IMAGES_DIR) -> list[Item]:
    """Every image with every AGREEMENT_HYPOTHESES entry; every other pair has a premise."""
    out = []
    for i, image in enumerate(image_paths(formats, images_dir)):
        data = image.read_bytes()
        for j, hypothesis in enumerate(AGREEMENT_HYPOTHESES):
            premise = AGREEMENT_PREMISES[(i + j) % len(AGREEMENT_PREMISES)] if (i + j) % 2 else ""
            out.append((data, hypothesis, premise))
    return out


def large_jpegs(
    sizes: Sequence[tuple[int, int]] = ((1920, 1080), (4032, 3024)),
    quality: int = 90,
    images_dir: Path = IMAGES_DIR,
    first: int = 0,
) -> list[bytes]:
    """Camera-sized JPEGs made by upscaling the JPEG test photos, from the ``first``-th
    on (decode costs scale with pixels, so preprocessing throughput is measured on what
    phones send)."""
    from PIL import Image

    sources = image_paths("jpeg", images_dir)
    out = []
    for n, size in enumerate(sizes):
        with Image.open(sources[(first + n) % len(sources)]) as img:
            big = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


DISTINCT_SCALES = (1.0, 0.75, 1.3, 0.6, 1.6)
DISTINCT_QUALITIES = (90, 80, 95, 70)


def distinct_jpegs(count: int, images_dir: Path = IMAGES_DIR) -> list[bytes]:
    """``count`` JPEGs with pairwise distinct bytes, made from the test photos.

    Why: the engine runs the ResNet stem once per distinct image of a call
    (image_sharing.py), so a throughput figure over a few images repeated measures the
    stem a few times, not once per item. Each photo (every test image of at least 200
    pixels a side, as RGB) is re-encoded at several scales and qualities, mirrored, then
    shifted by a pixel, in that order, until ``count`` are made: photo-sized files like
    those clients send, each a distinct stem input.
    """
    from PIL import Image, ImageOps

    photos = []
    for path in image_paths("all", images_dir):
        with Image.open(path) as img:
            if min(img.size) >= 200:
                photos.append(ImageOps.exif_transpose(img).convert("RGB"))
    variants = len(DISTINCT_SCALES) * len(DISTINCT_QUALITIES)
    out: list[bytes] = []
    seen: set[bytes] = set()
    k = 0
    while len(out) < count:
        photo = photos[k % len(photos)]
        v = k // len(photos)
        scale = DISTINCT_SCALES[v % len(DISTINCT_SCALES)]
        quality = DISTINCT_QUALITIES[(v // len(DISTINCT_SCALES)) % len(DISTINCT_QUALITIES)]
        image = photo.resize(
            (max(16, round(photo.width * scale)), max(16, round(photo.height * scale))),
            Image.Resampling.BICUBIC,
        )
        if (v // variants) % 2:
            image = ImageOps.mirror(image)
        shift = v // (2 * variants)
        if shift:
            image = image.crop((shift, 0, image.width, image.height))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        data = buffer.getvalue()
        if data not in seen:
            seen.add(data)
            out.append(data)
        k += 1
    return out
