"""Image decoding and resizing, identical to ModelScope's OFA preprocessing.

The reference opens the file with Pillow, applies ``ImageOps.exif_transpose``,
converts to RGB, resizes to (P, P) with bicubic filtering (aspect ratio not
kept, no crop), scales to [0, 1] and normalizes. The decode and resize happen
here on CPU and yield uint8 pixels; scaling and normalization run on the
engine's device in ``batching.py`` (the same float32 operations, on 4x fewer
bytes moved).

Two entry points:

- ``decode_image`` + ``resize_image``: the reference route, all Pillow.
- ``load_pixels(data, size, limits, fast=False)``: decode and resize in one
  call, on the cheapest route whose pixels are bit-identical to the reference
  (see ``jpeg.py``: libjpeg-turbo through simplejpeg for plain JPEGs, straight
  into the layout Pillow's resize reads, skipping two full-size copies). Every
  limit check and every error message is the reference's, because the header is
  still read by the same Pillow code. ``fast=True`` opts into a DCT-domain
  downscale for large JPEGs: NOT bit-identical (see docs/benchmarks.md for how far
  it moves pixels and probabilities).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import jpeg, repair
from .errors import InvalidInputError
from .limits import InputLimits

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "MPO"})
"""Encoded formats the interface accepts (MPO is how Pillow names multi-picture JPEGs)."""

INPUT_NAME = "IMAGE"

ROUTE_PILLOW = "pillow"
"""Route name prefix of the reference (all-Pillow) route; ``route_of`` appends why."""


def _open(data: bytes, limits: InputLimits, input_name: str) -> Image.Image:
    """Pillow's lazy open, its failures as ``InvalidInputError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInputError(
            input_name, f"declares more pixels than the limit of {limits.max_image_pixels}: {e}"
        ) from None
    except UnidentifiedImageError:
        raise InvalidInputError(input_name, _unidentified(data)) from None
    except Exception as e:  # Pillow plugins raise assorted errors on garbage headers
        raise InvalidInputError(input_name, f"could not be decoded: {e}") from None


_SNIFFED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")


def _unidentified(data: bytes) -> str:
    """Why Pillow could not open ``data``: where the bytes start like an accepted format,
    that format's own reason (a 12-bit JPEG, a PNG with a broken chunk), so that the
    message does not call a JPEG "not an image"."""
    Image.init()
    for name in _SNIFFED_FORMATS:
        factory, accept = Image.OPEN.get(name, (None, None))
        if factory is None or (accept is not None and not accept(data[:16])):
            continue
        try:
            factory(io.BytesIO(data), "").close()
        except Exception as e:
            return f"is a {name} file that could not be read: {e}"
    return "is not a decodable image (JPEG, PNG, WebP, BMP or GIF expected)"


def open_checked(data: bytes, limits: InputLimits, input_name: str = INPUT_NAME) -> Image.Image:
    """Open ``data`` lazily (header only) and apply every size limit before any pixel work.

    Why separate: both routes share this step, so the limits (bytes, header pixels,
    decompression bombs) and their messages cannot drift apart. A PNG whose only
    damage is the checksum of an ancillary chunk opens as the reference reads it
    (``repair``).
    """
    if not data:
        raise InvalidInputError(input_name, "is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise InvalidInputError(
            input_name,
            f"is {len(data)} bytes, over the limit of {limits.max_image_bytes} bytes",
        )
    try:
        image = _open(data, limits, input_name)
    except InvalidInputError:
        repaired = repair.png_with_checksums(data)
        if repaired is None:
            raise
        image = _open(repaired, limits, input_name)
    return _check_header(image, limits, input_name)


def _check_header(image: Image.Image, limits: InputLimits, input_name: str) -> Image.Image:
    """The format and the size the header declares, against the limits."""
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidInputError(
            input_name, f"format {image.format} is not accepted (JPEG, PNG, WebP, BMP or GIF)"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInputError(input_name, f"has an empty size {width}x{height}")
    if width * height > limits.max_image_pixels:
        raise InvalidInputError(
            input_name,
            f"is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_image_pixels} pixels",
        )
    return image


def _finish(image: Image.Image, input_name: str) -> Image.Image:
    """The reference's pixel work on an opened image: first frame, EXIF upright, RGB."""
    try:
        image.load()  # the first frame of an animation, as the reference
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except Exception as e:  # truncated data, bad EXIF, unsupported modes
        raise InvalidInputError(input_name, f"could not be decoded: {e}") from None


def decode_image(data: bytes, limits: InputLimits, input_name: str = INPUT_NAME) -> Image.Image:
    """Decode an encoded image to an upright RGB PIL image, refusing hostile input early.

    Size limits are checked from the header, before pixels are decoded, so a
    decompression bomb costs only its header. A JPEG that lacks only its
    end-of-image marker decodes whole, as the reference decodes it (``repair``).
    """
    image = open_checked(data, limits, input_name)
    try:
        return _finish(image, input_name)
    except InvalidInputError:
        completed = None
        if image.format in ("JPEG", "MPO"):
            completed = repair.jpeg_with_end_marker(data, image.mode)
        if completed is None:
            raise
    # The same header, whose limits passed above, and two bytes more (not counted again).
    image = _check_header(_open(completed, limits, input_name), limits, input_name)
    return _finish(image, input_name)


def resize_image(image: Image.Image, size: int) -> np.ndarray:
    """Bicubic resize to (size, size); returns HWC uint8 pixels, contiguous."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def _resize_rgbx(rgbx: np.ndarray, size: int) -> np.ndarray:
    """Pillow's bicubic resize of an [H, W, 4] RGBX array, read without a 3->4 byte repack.

    ``frombytes(..., "raw", "RGBX")`` is a straight 4-byte copy into Pillow's own
    storage (RGB images are stored 4 bytes a pixel), so the resize then runs the
    very same RGB code as ``resize_image``.
    """
    height, width = rgbx.shape[:2]
    image = Image.frombytes("RGB", (width, height), rgbx, "raw", "RGBX")
    return resize_image(image, size)


def _load(
    data: bytes, size: int, limits: InputLimits, fast: bool, input_name: str
) -> tuple[np.ndarray, str]:
    image = open_checked(data, limits, input_name)
    plan = jpeg.plan(image)
    if plan.ok:
        rgbx = jpeg.decode_rgbx(data, plan, min_side=2 * size if fast else 0)
        if rgbx is not None:
            return _resize_rgbx(rgbx, size), plan.route(scaled=rgbx.shape[:2] != plan.upright)
        reason = "simplejpeg refused it (the reference decides the outcome)"
    else:
        reason = plan.reason
    # The reference route re-opens the bytes: the probe above may have parsed EXIF.
    pixels = resize_image(decode_image(data, limits, input_name), size)
    return pixels, f"{ROUTE_PILLOW}: {reason}"


def load_pixels(
    data: bytes,
    size: int,
    limits: InputLimits,
    *,
    fast: bool = False,
    input_name: str = INPUT_NAME,
) -> np.ndarray:
    """Encoded image bytes -> [size, size, 3] uint8 RGB, C-contiguous (``PreparedItem.pixels``).

    Equal, bit for bit, to ``resize_image(decode_image(data, limits), size)`` when
    ``fast`` is False, and raises the same ``InvalidInputError`` (same limits, same
    messages) on bad input; only cheaper, by decoding plain JPEGs with
    libjpeg-turbo directly (``jpeg.py`` lists what falls back to Pillow and why).

    ``fast=True``: JPEGs are decoded at the smallest libjpeg-turbo DCT scale
    (M/8) that keeps both sides >= 2 * size (large photos only; smaller ones
    decode at full size), then take the same bicubic resize. Not bit-identical;
    opt-in only.
    """
    return _load(data, size, limits, fast, input_name)[0]


def route_of(data: bytes, size: int, limits: InputLimits, *, fast: bool = False) -> str:
    """Which route ``load_pixels`` takes for ``data`` and, for Pillow, why (benchmarks, docs)."""
    return _load(data, size, limits, fast, INPUT_NAME)[1]
