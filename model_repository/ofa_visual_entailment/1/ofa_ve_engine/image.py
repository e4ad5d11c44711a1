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

Every entry point first reads the IMAGE value (``image_bytes``): raw bytes are
the image file itself; a ``data:image/...;base64,...`` URL (RFC 2397, what a
client of the plain KServe v2 JSON body sends) and bare base64 of an accepted
format are decoded first, and count against ``max_image_bytes`` by their decoded
size. This is the one place IMAGE values are read.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
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


NOT_AN_IMAGE = (
    "not an image; over HTTP/JSON send raw bytes with the binary extension, or a "
    "data:image/...;base64 URL (JPEG, PNG, WebP, BMP or GIF)"
)
"""Why a value that is no image at all is refused: the hint a JSON client needs."""

DATA_URL_HINT = "data:image/<type>;base64,<the file, base64-encoded>"

_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG (and MPO)
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"RIFF",  # WebP: RIFF....WEBP
)
"""How the accepted formats' files start (the check below also wants WEBP at 8)."""

_BASE64_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_DATA_URL_HEADER_MAX = 256
"""A data URL's part before the comma (media type and parameters) is at most this long."""


def _has_signature(data: bytes) -> bool:
    """Whether ``data`` starts like a file of an accepted format."""
    if data.startswith(b"RIFF"):
        return data[8:12] == b"WEBP"
    return data.startswith(_SIGNATURES)


def _base64_payload(payload: bytes, limits: InputLimits, input_name: str, what: str) -> bytes:
    """Decode standard base64 (line breaks ignored, padding optional), refusing it by
    its decoded size before decoding when that is over ``max_image_bytes``."""
    payload = _BASE64_WHITESPACE.sub(b"", payload)
    payload += b"=" * (-len(payload) % 4)
    size = len(payload) // 4 * 3 - payload[-2:].count(b"=")
    if size > limits.max_image_bytes:
        raise InvalidInputError(
            input_name,
            f"is {size} bytes (decoded from {what}), over the limit of "
            f"{limits.max_image_bytes} bytes",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInputError(input_name, f"{what} is not valid base64: {e}") from None


def _data_url(value: bytes, limits: InputLimits, input_name: str) -> bytes:
    """The image a ``data:image/...;base64,...`` URL carries (RFC 2397)."""
    comma = value.find(b",", 0, _DATA_URL_HEADER_MAX)
    if comma < 0:
        raise InvalidInputError(
            input_name, f"is a data URL without its comma; expected {DATA_URL_HINT}"
        )
    params = [p.strip().lower() for p in value[5:comma].split(b";")]
    media_type = params[0].decode("ascii", "replace") or "text/plain (no media type)"
    if not media_type.startswith("image/"):
        raise InvalidInputError(
            input_name, f"is a data URL of {media_type}, not of an image; expected {DATA_URL_HINT}"
        )
    if len(params) < 2 or params[-1] != b"base64":
        raise InvalidInputError(
            input_name,
            f"is a data URL without ;base64 (percent-encoding is not accepted); "
            f"expected {DATA_URL_HINT}",
        )
    decoded = _base64_payload(value[comma + 1 :], limits, input_name, "its data URL")
    if not decoded:
        raise InvalidInputError(input_name, "is a data URL with no data (0 bytes)")
    if not _has_signature(decoded):  # one decoding only: its data must be the file itself
        raise InvalidInputError(
            input_name, "is a data URL whose data is not a JPEG, PNG, WebP, BMP or GIF file"
        )
    return decoded


def image_bytes(value: bytes, limits: InputLimits, input_name: str = INPUT_NAME) -> bytes:
    """The encoded image file an IMAGE value carries, by one rule:

    - a value starting with ``data:`` is a data URL (RFC 2397): it must be
      ``data:image/<type>[;param=value...];base64,<data>``; its data is decoded (the
      declared type is not trusted: the file's own bytes say what it is, as for raw
      bytes);
    - a value starting like a file of an accepted format (JPEG, PNG, GIF, BMP, WebP
      signatures) is that file, raw;
    - else a value that is base64 (standard alphabet, line breaks ignored) whose
      decoded bytes start like a file of an accepted format is decoded (bare
      base64: what a client that cannot send binary data tends to send);
    - anything else is taken as raw bytes (and then refused as ``NOT_AN_IMAGE``
      unless Pillow reads it).

    A decoded image counts against ``max_image_bytes`` by its decoded size. The
    rule is unambiguous: the base64 of an accepted format never starts like one
    (``/9j/``, ``iVBOR``, ``R0lGOD``, ``Qk``, ``UklGR``), and no raw file starts
    with ``data:``.
    """
    if value[:5].lower() == b"data:":
        return _data_url(value, limits, input_name)
    if _has_signature(value):
        return value
    head = _BASE64_WHITESPACE.sub(b"", value[:64])[:16]
    try:
        sniffed = base64.b64decode(head, validate=True) if len(head) == 16 else b""
    except (binascii.Error, ValueError):
        sniffed = b""
    if not _has_signature(sniffed):
        return value
    return _base64_payload(value, limits, input_name, "its base64 text")


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
    return NOT_AN_IMAGE


def open_checked(data: bytes, limits: InputLimits, input_name: str = INPUT_NAME) -> Image.Image:
    """Open the image of an IMAGE value (``image_bytes``) lazily (header only) and apply
    every size limit before any pixel work.

    Why separate: both routes share this step, so the limits (bytes, header pixels,
    decompression bombs) and their messages cannot drift apart. A PNG whose only
    damage is the checksum of an ancillary chunk opens as the reference reads it
    (``repair``).
    """
    return _open_checked(image_bytes(data, limits, input_name), limits, input_name)


def _open_checked(data: bytes, limits: InputLimits, input_name: str) -> Image.Image:
    """``open_checked`` of the image file itself (a value already through ``image_bytes``)."""
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
    ``data``: an IMAGE value (``image_bytes``).
    """
    return _decode_image(image_bytes(data, limits, input_name), limits, input_name)


def _decode_image(data: bytes, limits: InputLimits, input_name: str) -> Image.Image:
    """``decode_image`` of the image file itself."""
    image = _open_checked(data, limits, input_name)
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
    data = image_bytes(data, limits, input_name)
    image = _open_checked(data, limits, input_name)
    plan = jpeg.plan(image)
    if plan.ok:
        rgbx = jpeg.decode_rgbx(data, plan, min_side=2 * size if fast else 0)
        if rgbx is not None:
            return _resize_rgbx(rgbx, size), plan.route(scaled=rgbx.shape[:2] != plan.upright)
        reason = "simplejpeg refused it (the reference decides the outcome)"
    else:
        reason = plan.reason
    # The reference route re-opens the bytes: the probe above may have parsed EXIF.
    pixels = resize_image(_decode_image(data, limits, input_name), size)
    return pixels, f"{ROUTE_PILLOW}: {reason}"


def load_pixels(
    data: bytes,
    size: int,
    limits: InputLimits,
    *,
    fast: bool = False,
    input_name: str = INPUT_NAME,
) -> np.ndarray:
    """An IMAGE value (encoded image bytes, or ``image_bytes``' data URL or base64 of
    one) -> [size, size, 3] uint8 RGB, C-contiguous (``PreparedItem.pixels``).

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
