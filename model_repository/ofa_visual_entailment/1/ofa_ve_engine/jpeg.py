"""The exact JPEG route: libjpeg-turbo through simplejpeg, only where it equals Pillow.

Why: Pillow decodes with the same libjpeg-turbo (accurate integer IDCT, fancy
upsampling) but then repacks every pixel from 3 to 4 bytes, and the reference
adds two more full-size copies (``exif_transpose``, ``convert``). simplejpeg
decodes straight to RGBX, the layout Pillow stores RGB in, so a 12 MP photo
costs about half the CPU before the resize.

The route is taken only when the output is provably the reference's; anything
else returns to Pillow, which then decides the outcome (pixels or error):

- format ``JPEG`` (not ``MPO``: multi-picture files stay on Pillow's path),
- Pillow mode ``RGB`` (YCbCr or RGB JPEG) or ``L`` (grayscale; libjpeg's
  gray->RGB replication is Pillow's ``convert("RGB")``), never CMYK/YCCK
  (Pillow inverts Adobe CMYK and converts with its own formula),
- EXIF orientation read by Pillow's own ``getexif`` (XMP included); 2..8 are
  replayed as the exact numpy pixel permutations of ``Image.transpose``,
- simplejpeg in ``strict`` mode: any libjpeg warning (corrupt or truncated data)
  raises, and the bytes go to Pillow, which raises today's error,
- simplejpeg importable; its decoded size must equal the header's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

try:  # optional at import time: without it every image takes Pillow's route
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is pinned in requirements/engine.txt
    simplejpeg = None

ORIENTATION_TAG = 0x0112

REUSE_BUFFER_MAX_BYTES = 64 * 1024 * 1024
"""Decoded images up to this size (16 MP RGBX) are written into one buffer per thread.

Why: a fresh numpy array of a few MB is mmapped and page-faulted on every call
(glibc never recycles allocations that large), which costs as much as the
decode saves on a 640x480 photo. Memory held: one buffer per decoding thread,
as large as the largest image that thread has decoded, at most this size."""

_local = threading.local()


def _buffer(nbytes: int) -> np.ndarray | None:
    """This thread's reusable output buffer, grown to at least ``nbytes``; None if too big."""
    if nbytes > REUSE_BUFFER_MAX_BYTES:
        return None
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.size < nbytes:
        buffer = np.empty(nbytes, dtype=np.uint8)
        _local.buffer = buffer
    return buffer


_TRANSPOSES: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],  # ROTATE_270 (90 clockwise)
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: a.transpose(1, 0, 2)[::-1],  # ROTATE_90 (90 counter-clockwise)
}
"""``ImageOps.exif_transpose``'s methods as numpy views (pure pixel permutations)."""


@dataclass(frozen=True)
class JpegPlan:
    """What the header says about one image: whether the exact route applies, and how."""

    ok: bool
    reason: str = ""
    orientation: int = 1
    stored: tuple[int, int] = (0, 0)
    """(height, width) as encoded."""

    @property
    def upright(self) -> tuple[int, int]:
        """(height, width) after the EXIF transpose."""
        h, w = self.stored
        return (w, h) if self.orientation in (5, 6, 7, 8) else (h, w)

    def route(self, *, scaled: bool) -> str:
        """A short route name for benchmarks and docs."""
        name = "simplejpeg-scaled" if scaled else "simplejpeg"
        return f"{name}+exif{self.orientation}" if self.orientation in _TRANSPOSES else name


def exif_orientation(image: Image.Image) -> int | None:
    """The orientation ``ImageOps.exif_transpose`` will act on; None where the EXIF is bad.

    Read with Pillow's own ``getexif`` (which also reads XMP's tiff:Orientation).
    None also where exif_transpose would fail rewriting the EXIF without the tag:
    the reference then fails the image, so such bytes must stay on its route.
    """
    try:
        exif = image.getexif()
        orientation = exif.get(ORIENTATION_TAG, 1)
        if orientation in _TRANSPOSES:
            del exif[ORIENTATION_TAG]
            exif.tobytes()
    except Exception:
        return None
    return orientation


def plan(image: Image.Image) -> JpegPlan:
    """Decide from an opened (not loaded) Pillow image whether the exact route applies."""
    if simplejpeg is None:
        return JpegPlan(False, "simplejpeg is not installed")
    if image.format != "JPEG":
        return JpegPlan(False, f"format {image.format}")
    if image.mode not in ("RGB", "L"):
        return JpegPlan(False, f"JPEG in mode {image.mode}")
    orientation = exif_orientation(image)
    if orientation is None:  # Pillow's exif_transpose decides what happens
        return JpegPlan(False, "unreadable EXIF")
    width, height = image.size
    return JpegPlan(True, orientation=orientation, stored=(height, width))


def is_rotated(orientation: int) -> bool:
    """True where ``exif_transpose`` moves pixels (orientation 2..8)."""
    return orientation in _TRANSPOSES


def decode_rgbx(data: bytes, jpeg_plan: JpegPlan, *, min_side: int = 0) -> np.ndarray | None:
    """Decode to an upright [H, W, 4] RGBX uint8 array, or None to hand the bytes to Pillow.

    The array may be a view of this thread's reusable buffer: use it (Pillow's
    ``frombytes`` copies it) before this thread decodes again.

    ``min_side`` > 0 lets libjpeg-turbo decode at the smallest M/8 DCT scale that
    keeps both sides >= min_side (the opt-in fast route; not bit-identical).
    """
    try:
        if min_side > 0:
            height, width = simplejpeg.decode_jpeg_header(
                data, min_height=min_side, min_width=min_side
            )[:2]
        else:
            height, width = jpeg_plan.stored
        rgbx = simplejpeg.decode_jpeg(
            data,
            colorspace="RGBX",
            fastdct=False,  # JDCT_ISLOW, as Pillow
            fastupsample=False,  # fancy upsampling, as Pillow
            min_height=min_side,
            min_width=min_side,
            buffer=_buffer(height * width * 4),
            strict=True,  # any libjpeg warning -> Pillow's route decides
        )
    except Exception:  # corrupt, truncated, 12-bit, arithmetic-coded, ...
        return None
    if rgbx.shape[:2] != (height, width):
        return None
    transpose = _TRANSPOSES.get(jpeg_plan.orientation)
    if transpose is not None:
        rgbx = np.ascontiguousarray(transpose(rgbx))
    return rgbx
