"""Turning whatever the caller holds into the encoded image bytes the server wants.

Accepted: bytes-like, a path (str or os.PathLike), an http(s) URL (fetched
here), a PIL image (encoded as PNG, lossless), or a binary file object.
PIL is only imported when a PIL image is actually passed.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import InvalidInputError
from .url_fetch import UrlFetcher, is_url, redact

if TYPE_CHECKING:
    from PIL import Image as PILImage

    ImageInput = bytes | bytearray | memoryview | str | os.PathLike[str] | PILImage.Image | BinaryIO
else:
    ImageInput = Any

# Modes PNG stores as they are; anything else (CMYK, YCbCr, F, ...) is converted first.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def _bad(reason: str) -> InvalidInputError:
    return InvalidInputError(f"IMAGE: {reason}", input_name="IMAGE")


def is_pil_image(obj: object) -> bool:
    """True for a PIL image, without importing PIL (if PIL isn't loaded, it can't be one)."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(obj, module.Image)


def encode_pil(image: PILImage.Image) -> bytes:
    """PNG bytes of a PIL image: lossless, so the server sees exactly these pixels."""
    if image.width < 1 or image.height < 1:
        raise _bad(f"the PIL image has an empty size {image.width}x{image.height}")
    if image.mode not in _PNG_MODES:
        has_alpha = "A" in image.getbands()
        image = image.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    # compress_level=1: several times faster than the default and still lossless.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def load_image(image: ImageInput, fetcher: UrlFetcher) -> bytes:
    """The encoded image bytes for any accepted form; InvalidInputError naming IMAGE otherwise."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, str) and is_url(image):
        data = fetcher.fetch(image)
    elif isinstance(image, str) and "://" in image[:16]:
        raise _bad(f"unsupported URL scheme in {redact(image)} (only http and https)")
    elif isinstance(image, (str, os.PathLike)):
        data = _read_file(Path(image), fetcher.options.max_bytes)
    elif is_pil_image(image):
        data = encode_pil(image)
    elif hasattr(image, "read"):
        data = _capped(image.read, fetcher.options.max_bytes, "the file object")
    else:
        raise _bad(
            f"unsupported type {type(image).__name__}; pass bytes, a path, "
            "an http(s) URL, a PIL.Image or a binary file object"
        )
    if not data:
        raise _bad("image is empty (0 bytes)")
    return data


def _capped(read: Any, limit: int, shown: str) -> bytes:
    """At most ``limit`` bytes from ``read`` (a file's ``read``): a larger source (a huge
    file, a device such as /dev/zero) is refused after reading limit + 1 bytes, not
    read whole. The cap is the URL fetcher's (``ImageFetchOptions.max_bytes``): one cap
    for every way an image arrives, the server's own default."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:  # a raw stream (socket, pipe) may return less than asked
        chunk = read(limit + 1 - size)
        if not isinstance(chunk, bytes):
            raise _bad("file object must be opened in binary mode")
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise _bad(f"{shown} is over the {limit}-byte cap")
    return b"".join(chunks)


def _read_file(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as file:
            return _capped(file.read, limit, str(path))
    except FileNotFoundError:
        raise _bad(f"no such file: {path}") from None
    except IsADirectoryError:
        raise _bad(f"is a directory: {path}") from None
    except OSError as exc:
        raise _bad(f"cannot read {path}: {exc.strerror or exc}") from None
