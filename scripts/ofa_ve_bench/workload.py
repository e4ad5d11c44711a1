"""The suite's shared test inputs: real encoded images and awkward sentences.

Images are real photographs re-encoded by `tests/data/make_images.py` (sources
and licences are documented there). Each exercises one thing a decoder can get
wrong: aspect ratio, tiny or exact-size images, EXIF orientation, alpha, gray,
palette, CMYK, and the other formats the server accepts.
"""

from __future__ import annotations

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
`<person>`, runs of whitespace, tabs/newlines and non-ASCII text."""

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
