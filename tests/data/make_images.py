#!/usr/bin/env python3
"""Regenerate the test images in tests/data/images/ from scikit-image's sample photos.

Why real photographs: the engine must decode, orient, convert and resize real
encoded files exactly as ModelScope does, and synthetic flat-colour drawings
hide resampling and chroma-subsampling differences.

Sources (all from the `skimage/data/` folder of the scikit-image 0.26.0 wheel on
PyPI, read straight out of the wheel; scikit-image is never installed). Licences
as stated in scikit-image's `skimage/data/_fetchers.py`:

- astronaut.png  Eileen Collins, NASA; public domain
- chelsea.png    the cat Chelsea; CC0 by the photographer (Stefan van der Walt)
- coffee.png     a cup of coffee; CC0 by the photographer (Rachel Michetti)
- camera.png     the cameraman; CC0 by the photographer (Lav Varshney)
- rocket.jpg     SpaceX Falcon 9 launch; released into the public domain by SpaceX
- horse.png      horse silhouette (openclipart); CC0 by Andreas Preuss
- coins.png      Greek coins, Brooklyn Museum; no known copyright restrictions

Every output is resized and re-encoded here (kept under 150 KB each). Usage:

    python tests/data/make_images.py [--wheel scikit_image-0.26.0-....whl]
    python tests/data/make_images.py --calibration [--wheel ...]

`--calibration` writes instead the photos that `quantization int8` calibrates on,
inside the model repository (`ofa_ve_engine/calibration/`, whose README gives their
sources and licences): other photos of the same data set than the test images, so
that agreement measured on the test images is measured on photos calibration did
not see.

Without --wheel it runs `pip download --no-deps scikit-image==0.26.0` into a
temporary folder (needs PyPI). The committed images are the reference; this
script documents and reproduces how they were made.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image, ImageOps

SKIMAGE_VERSION = "0.26.0"
OUT_DIR = Path(__file__).resolve().parent / "images"
CALIBRATION_DIR = (
    Path(__file__).resolve().parents[2]
    / "model_repository/ofa_visual_entailment/1/ofa_ve_engine/calibration"
)
CALIBRATION_SOURCES = (
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "clock_motion.png",
    "brick.png",
    "gravel.png",
)
"""scikit-image sample photos none of the test images comes from (licences in the
calibration folder's README)."""
CALIBRATION_SIDE = 480
"""Longest side of a calibration photo: the model's patch size (it resizes to 480x480)."""
MAX_BYTES = 150 * 1024
EXIF_ORIENTATION = 0x0112


def _download_wheel(dest: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            f"scikit-image=={SKIMAGE_VERSION}",
            "-d",
            str(dest),
        ],
        check=True,
    )
    wheels = sorted(dest.glob("scikit_image-*.whl"))
    if not wheels:
        raise SystemExit("pip download produced no scikit-image wheel")
    return wheels[0]


def _load(wheel: zipfile.ZipFile, name: str) -> Image.Image:
    image = Image.open(io.BytesIO(wheel.read(f"skimage/data/{name}")))
    image.load()
    return image


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Crop to the target aspect ratio around the centre, then resize (LANCZOS)."""
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


def make_images(wheel_path: Path, out_dir: Path = OUT_DIR) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **params: object) -> None:
        path = out_dir / name
        image.save(path, **params)
        written[name] = path

    with zipfile.ZipFile(wheel_path) as wheel:
        astronaut = _load(wheel, "astronaut.png").convert("RGB")
        chelsea = _load(wheel, "chelsea.png").convert("RGB")
        coffee = _load(wheel, "coffee.png").convert("RGB")
        camera = _load(wheel, "camera.png")
        rocket = _load(wheel, "rocket.jpg").convert("RGB")
        horse = _load(wheel, "horse.png")
        coins = _load(wheel, "coins.png")

    # 640x480 landscape JPEG, stretched from a square photo (4:2:0, baseline).
    save(
        "astronaut_640x480.jpg", astronaut.resize((640, 480), Image.Resampling.LANCZOS), quality=85
    )
    # 300x500 portrait JPEG, progressive.
    save("chelsea_300x500.jpg", _fit(chelsea, (300, 500)), quality=85, progressive=True)
    # 1024x256 very wide JPEG.
    save("rocket_1024x256.jpg", _fit(rocket, (1024, 256)), quality=80)
    # 50x40 tiny PNG (upsampled ~10x by the model's 480 px resize).
    save("coffee_50x40.png", coffee.resize((50, 40), Image.Resampling.LANCZOS), optimize=True)
    # Grayscale ("L") PNG.
    save(
        "camera_gray_256.png",
        camera.convert("L").resize((256, 256), Image.Resampling.LANCZOS),
        optimize=True,
    )
    # RGBA PNG: a photo under the horse's alpha mask. Transparent pixels keep real colour,
    # so "drop alpha" (what ModelScope's convert('RGB') does) and "composite on white" differ.
    alpha = horse.getchannel("A") if horse.mode == "RGBA" else horse.convert("L")
    alpha = alpha.resize((200, 164), Image.Resampling.LANCZOS)
    rgba = _fit(chelsea, alpha.size).convert("RGBA")
    rgba.putalpha(alpha)
    save("chelsea_horse_rgba.png", rgba, optimize=True)
    # JPEG stored 400x300 with EXIF Orientation 6 (displayed rotated 90 degrees clockwise,
    # i.e. 300x400): the decoded, transposed picture differs from the stored pixels.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    save("coffee_exif_orientation6.jpg", _fit(coffee, (400, 300)), quality=85, exif=exif.tobytes())
    # Palette ("P") PNG.
    save(
        "coins_palette.png",
        coins.convert("RGB").resize((192, 152), Image.Resampling.LANCZOS).quantize(64),
        optimize=True,
    )
    # Exactly the model's patch size (no resize needed), JPEG without chroma subsampling.
    save(
        "astronaut_480x480.jpg",
        astronaut.resize((480, 480), Image.Resampling.LANCZOS),
        quality=90,
        subsampling=0,
    )
    # CMYK JPEG (PIL's convert('RGB') handles it; decoders that assume RGB do not).
    save("chelsea_cmyk.jpg", _fit(chelsea, (240, 160)).convert("CMYK"), quality=85)
    # Other formats the server accepts.
    save("rocket_320x214.webp", rocket.resize((320, 214), Image.Resampling.LANCZOS), quality=80)
    save("coffee_120x80.bmp", coffee.resize((120, 80), Image.Resampling.LANCZOS))
    frames = [
        _fit(chelsea, (96, 64)).quantize(32),
        _fit(coffee, (96, 64)).quantize(32),
    ]
    save(
        "chelsea_coffee_2frames.gif",
        frames[0],
        save_all=True,
        append_images=frames[1:],
        duration=200,
        loop=0,
    )

    too_big = {n: p.stat().st_size for n, p in written.items() if p.stat().st_size > MAX_BYTES}
    if too_big:
        raise SystemExit(f"images over {MAX_BYTES} bytes: {too_big}")
    return written


def make_calibration_photos(wheel_path: Path, out_dir: Path = CALIBRATION_DIR) -> dict[str, Path]:
    """The calibration photos: each source as an RGB JPEG, longest side 480 px."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        for source in CALIBRATION_SOURCES:
            image = _load(wheel, source).convert("RGB")
            image.thumbnail((CALIBRATION_SIDE, CALIBRATION_SIDE), Image.Resampling.LANCZOS)
            path = out_dir / (Path(source).stem + ".jpg")
            image.save(path, quality=85)
            written[path.name] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded scikit-image wheel")
    parser.add_argument("--out", type=Path, help=f"default {OUT_DIR} (or {CALIBRATION_DIR})")
    parser.add_argument(
        "--calibration", action="store_true", help="write the int8 calibration photos instead"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or _download_wheel(Path(tmp))
        if args.calibration:
            written = make_calibration_photos(wheel, args.out or CALIBRATION_DIR)
        else:
            written = make_images(wheel, args.out or OUT_DIR)
    for name, path in sorted(written.items()):
        with Image.open(path) as im:
            print(
                f"{name:32s} {im.format:5s} {im.mode:5s} {im.size[0]}x{im.size[1]}"
                f"  {path.stat().st_size} bytes"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
