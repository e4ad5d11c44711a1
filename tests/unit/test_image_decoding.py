"""Image decoding: what the reference does to real encoded files, and what we refuse."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from ofa_ve_engine.errors import InvalidInputError
from ofa_ve_engine.image import decode_image, resize_image
from ofa_ve_engine.limits import InputLimits
from PIL import Image, ImageOps
from torchvision import transforms

LIMITS = InputLimits()


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    rgb = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.broadcast_to((x // 2 + y // 2), (height, width, 1)),
        ],
        axis=2,
    )
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def test_exif_orientation_is_applied() -> None:
    image = _gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(data, LIMITS)
    assert decoded.size == (20, 40)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))


def test_pixels_equal_the_reference_torchvision_transform() -> None:
    """Our uint8 resize + device-side normalisation equals ModelScope's torchvision chain."""
    from ofa_ve_engine.batching import PreparedItem, collate

    image = decode_image(_encode(_gradient(123, 77), "PNG"), LIMITS)
    reference = transforms.Compose(
        [
            lambda im: im.convert("RGB"),
            transforms.Resize((480, 480), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )(image)
    item = PreparedItem(pixels=resize_image(image, 480), input_ids=(0, 2), decoder_prompt=(0,))
    batch = collate(
        [item],
        pad_id=1,
        device=torch.device("cpu"),
        dtype=torch.float32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        channels_last=True,
    )
    assert torch.equal(batch.images[0], reference)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    decoded = decode_image(_encode(_gradient(32, 24), fmt), LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (32, 24)


def test_rgba_and_grayscale_convert_like_pillow() -> None:
    rgba = _gradient(16, 16).convert("RGBA")
    gray = _gradient(16, 16).convert("L")
    for image in (rgba, gray):
        decoded = decode_image(_encode(image, "PNG"), LIMITS)
        assert np.array_equal(np.asarray(decoded), np.asarray(image.convert("RGB")))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _png_bomb(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims width x height; its data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"hello, I am a text file posing as an image\n" * 3, "not an image"),
        (_png_bomb(100_000, 100_000), "declares more pixels than the limit"),
        (_png_bomb(8000, 6000), "= 48000000 pixels, over the limit of 40000000 pixels"),
    ],
    ids=["empty", "text", "bomb-header", "too-many-pixels"],
)
def test_bad_images_are_refused_naming_the_input(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        decode_image(data, LIMITS)
    assert info.value.input_name == "IMAGE"
    assert fragment in str(info.value)


def test_truncated_jpeg_is_refused() -> None:
    data = _encode(_gradient(200, 200), "JPEG")
    with pytest.raises(InvalidInputError, match="IMAGE: could not be decoded"):
        decode_image(data[: len(data) // 2], LIMITS)


def test_byte_limit_is_checked_first() -> None:
    data = _encode(_gradient(64, 64), "PNG")
    with pytest.raises(InvalidInputError, match="over the limit of 100 bytes"):
        decode_image(data, InputLimits(max_image_bytes=100))
