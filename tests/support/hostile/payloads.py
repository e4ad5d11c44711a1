"""Generators of hostile and awkward-but-valid encoded images.

Why generated, not committed: a decompression bomb or a 20 MiB payload is cheap
to build from a real photo in a few milliseconds and would bloat the repository.
Every hostile file starts from a real encoded photograph (``tests/data/images``)
or from a byte-exact header built with ``struct``, so the server's decoder meets
the same bytes an attacker would send.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from ofa_ve_data.workload import TEST_IMAGES
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def real_image(name: str = "landscape_640x480_jpeg") -> bytes:
    """The encoded bytes of one of the suite's real test photos."""
    return TEST_IMAGES[name].read_bytes()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode a PIL image in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first `keep` fraction of an encoded file: a download cut short."""
    return data[: max(1, int(len(data) * keep))]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written byte by byte: lets a header say anything, and encodes the 16-bit
    RGB images Pillow cannot write."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def png_header_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims `width` x `height` RGB pixels but whose
    data is one tiny row: decoding it honestly would need width*height*3 bytes."""
    return png(width, height, 8, 2, b"\x00" * 16)


def gif_header_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame claim `width` x `height`."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 6
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def jpeg_header_claiming(width: int, height: int, base: bytes | None = None) -> bytes:
    """A real JPEG with its start-of-frame dimensions rewritten to `width` x `height`."""
    data = bytearray(base if base is not None else real_image())
    i = 2
    while i < len(data) - 9:
        if data[i] != 0xFF:
            raise ValueError("not a baseline JPEG marker stream")
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # SOF0/1/2: precision, height, width
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no start-of-frame marker found")


def png_16bit_gray() -> bytes:
    """A real photo as a 16-bit grayscale PNG (Pillow mode I;16)."""
    gray = np.asarray(Image.open(TEST_IMAGES["gray_256x256_png"]).convert("L"))
    return encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG")


def png_16bit_rgb() -> bytes:
    """A real photo as a 48-bit RGB PNG (bit depth 16, colour type 2)."""
    rgb = np.asarray(Image.open(TEST_IMAGES["tiny_50x40_png"]).convert("RGB"))
    wide = (rgb.astype(">u2") * 257).reshape(rgb.shape[0], -1)
    rows = b"".join(b"\x00" + row.tobytes() for row in wide)
    return png(rgb.shape[1], rgb.shape[0], 16, 2, rows)


def palette_with_transparency(fmt: str = "PNG") -> bytes:
    """A real photo quantised to 64 colours with one colour transparent (tRNS)."""
    image = Image.open(TEST_IMAGES["tiny_50x40_png"]).convert("RGB").quantize(64)
    return encode(image, fmt, transparency=0)


def animated(fmt: str) -> bytes:
    """A two-frame animation (GIF, APNG or WebP) of two different real photos."""
    first = Image.open(TEST_IMAGES["tiny_50x40_png"]).convert("RGB")
    second = Image.open(TEST_IMAGES["bmp_120x80"]).convert("RGB").resize(first.size)
    return encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0)


def one_by_one(fmt: str) -> bytes:
    """A single pixel: the smallest valid image."""
    return encode(Image.new("RGB", (1, 1), (200, 30, 40)), fmt)


def extreme_aspect() -> bytes:
    """A 4000 x 1 strip: valid, and stretched to a square like any other image."""
    return encode(Image.new("RGB", (4000, 1), (10, 120, 240)), "PNG")


def over_pixel_limit(pixels_limit: int) -> bytes:
    """A valid, fully decodable PNG just over `pixels_limit` pixels (cheap: flat gray)."""
    width = 8000
    height = pixels_limit // width + 1
    return encode(Image.new("L", (width, height), 128), "PNG", compress_level=1)


def over_byte_limit(bytes_limit: int) -> bytes:
    """A real JPEG followed by padding up to one byte over `bytes_limit`: decoders stop
    at the end-of-image marker, so only a byte check can refuse it."""
    data = real_image()
    return data + b"\x00" * (bytes_limit + 1 - len(data))


def unaccepted_format(fmt: str = "TIFF") -> bytes:
    """A real photo in a format Pillow reads but the interface does not accept."""
    return encode(Image.open(TEST_IMAGES["tiny_50x40_png"]).convert("RGB"), fmt)


def corrupt_png_data() -> bytes:
    """A PNG with a valid header and a compressed-data chunk of random bytes."""
    rows = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


TEXT_POSING_AS_IMAGE = (
    b"Dear server, this is a plain-text file that was given the name photo.jpg.\n" * 8
)

SVG_WITH_EXTERNAL_REFERENCE = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
    b'xmlns:xlink="http://www.w3.org/1999/xlink" width="10" height="10">'
    b'<image xlink:href="{url}" width="10" height="10"/></svg>'
)
"""An SVG that would make a renderer fetch `{url}` (format the URL in)."""


# --------------------------------------------------------------- slightly damaged files
# What ModelScope's pipeline reads through (its import sets Pillow's
# LOAD_TRUNCATED_IMAGES), and which of those we accept too (ofa_ve_engine/repair.py).


def without_end_marker(jpeg: bytes) -> bytes:
    """A JPEG whose last two bytes, the end-of-image marker, are missing."""
    assert jpeg.endswith(b"\xff\xd9")
    return jpeg[:-2]


def scan_boundaries(jpeg: bytes) -> list[int]:
    """Offsets of every start-of-scan marker after the first: a progressive file cut
    there holds only its first scans (a coarser picture), each one whole."""
    return [i for i in range(len(jpeg) - 1) if jpeg[i : i + 2] == b"\xff\xda"][1:]


def with_bad_checksum(png_data: bytes, kind: bytes) -> bytes:
    """A PNG with the checksum of its first `kind` chunk zeroed (its data intact)."""
    pos = 8
    while pos < len(png_data):
        (length,) = struct.unpack(">I", png_data[pos : pos + 4])
        end = pos + 8 + length
        if png_data[pos + 4 : pos + 8] == kind:
            return png_data[:end] + b"\x00\x00\x00\x00" + png_data[end + 4 :]
        pos = end + 4
    raise ValueError(f"no {kind!r} chunk")


def with_chunk(png_data: bytes, kind: bytes, body: bytes) -> bytes:
    """A PNG with a `kind` chunk right after its header (before the image data)."""
    end_of_ihdr = 8 + 8 + 13 + 4
    return png_data[:end_of_ihdr] + _png_chunk(kind, body) + png_data[end_of_ihdr:]


def with_precision(jpeg: bytes, bits: int) -> bytes:
    """A baseline JPEG whose frame header claims `bits` of sample precision (12-bit
    JPEGs are valid, but neither Pillow nor the reference reads them)."""
    at = jpeg.index(b"\xff\xc0") + 4
    return jpeg[:at] + bytes([bits]) + jpeg[at + 1 :]
