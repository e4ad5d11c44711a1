"""Image decoding and resizing, identical to ModelScope's OFA preprocessing.

The reference opens the file with Pillow, applies ``ImageOps.exif_transpose``,
converts to RGB, resizes to (P, P) with bicubic filtering (aspect ratio not
kept, no crop), scales to [0, 1] and normalizes. The decode and resize happen
here on CPU and yield uint8 pixels; scaling and normalization run on the
engine's device in ``batching.py`` (the same float32 operations, on 4x fewer
bytes moved).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidInputError
from .limits import InputLimits

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "MPO"})
"""Encoded formats the interface accepts (MPO is how Pillow names multi-picture JPEGs)."""

INPUT_NAME = "IMAGE"


def decode_image(data: bytes, limits: InputLimits, input_name: str = INPUT_NAME) -> Image.Image:
    """Decode an encoded image to an upright RGB PIL image, refusing hostile input early.

    Size limits are checked from the header, before pixels are decoded, so a
    decompression bomb costs only its header.
    """
    if not data:
        raise InvalidInputError(input_name, "is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise InvalidInputError(
            input_name,
            f"is {len(data)} bytes, over the limit of {limits.max_image_bytes} bytes",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInputError(
            input_name, f"declares more pixels than the limit of {limits.max_image_pixels}: {e}"
        ) from None
    except UnidentifiedImageError:
        raise InvalidInputError(
            input_name, "is not a decodable image (JPEG, PNG, WebP, BMP or GIF expected)"
        ) from None
    except Exception as e:  # Pillow plugins raise assorted errors on garbage headers
        raise InvalidInputError(input_name, f"could not be decoded: {e}") from None

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
    try:
        image.load()  # the first frame of an animation, as the reference
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except Exception as e:  # truncated data, bad EXIF, unsupported modes
        raise InvalidInputError(input_name, f"could not be decoded: {e}") from None


def resize_image(image: Image.Image, size: int) -> np.ndarray:
    """Bicubic resize to (size, size); returns HWC uint8 pixels, contiguous."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)
