"""image.py's reading of an IMAGE value (`image_bytes`): raw bytes, a data URL
(RFC 2397), bare base64, and what each refuses, with its message.

Why here: every route (exact, fast, GPU's header check) reads IMAGE through this one
function, so HTTP/JSON clients get the same pixels and the same limits as raw bytes.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from ofa_ve_data.workload import TEST_IMAGES
from ofa_ve_engine import InputLimits
from ofa_ve_engine.errors import InvalidInputError
from ofa_ve_engine.image import NOT_AN_IMAGE, image_bytes, load_pixels, open_checked

LIMITS = InputLimits()
SIZE = 64
FORMATS = [
    "landscape_640x480_jpeg",
    "tiny_50x40_png",
    "webp_320x214",
    "gif_2frames_96x64",
    "bmp_120x80",
]


def _raw(name: str) -> bytes:
    return TEST_IMAGES[name].read_bytes()


def _refusal(value: bytes, limits: InputLimits = LIMITS) -> str:
    with pytest.raises(InvalidInputError) as info:
        load_pixels(value, SIZE, limits)
    assert info.value.input_name == "IMAGE"
    return str(info.value)


@pytest.mark.parametrize("name", FORMATS)
def test_a_data_url_and_bare_base64_give_the_raw_bytes_pixels(name: str) -> None:
    raw = _raw(name)
    text = base64.b64encode(raw)
    want = load_pixels(raw, SIZE, LIMITS)
    assert image_bytes(raw, LIMITS) is raw  # raw bytes are taken as they are
    for value in (
        b"data:image/jpeg;base64," + text,  # the declared type is not trusted: bytes decide
        b"DATA:Image/PNG;name=photo.png;base64," + text,  # parameters, any case
        text,  # bare base64
        base64.encodebytes(raw),  # with line breaks (76 columns)
        text.rstrip(b"="),  # padding left out
    ):
        assert image_bytes(value, LIMITS) == raw
        np.testing.assert_array_equal(load_pixels(value, SIZE, LIMITS), want)


def test_bad_base64_in_a_data_url_is_refused_naming_why() -> None:
    text = base64.b64encode(_raw("tiny_50x40_png")).decode()
    message = _refusal(f"data:image/png;base64,{text[:40]}!!{text[40:]}".encode())
    assert message.startswith("IMAGE: its data URL is not valid base64")
    bare = _refusal((text[:40] + "!!" + text[40:]).encode())  # starts like base64 of a PNG
    assert bare.startswith("IMAGE: its base64 text is not valid base64")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"data:text/plain;base64,aGVsbG8=", "is a data URL of text/plain, not of an image"),
        (b"data:,hello", "is a data URL of text/plain (no media type), not of an image"),
        (b"data:application/octet-stream;base64,iVBORw0KGgo=", "of application/octet-stream"),
        (b"data:image/png,%89PNG%0D%0A", "is a data URL without ;base64"),
        (b"data:image/png;base64", "is a data URL without its comma"),
        (b"data:image/png;base64,", "is a data URL with no data"),
    ],
)
def test_a_data_url_that_is_not_a_base64_image_is_refused(value: bytes, fragment: str) -> None:
    message = _refusal(value)
    assert fragment in message
    assert "data:image/<type>;base64," in message or "no data" in message


def test_a_data_url_counts_against_the_limit_by_its_decoded_size() -> None:
    raw = _raw("landscape_640x480_jpeg")
    url = b"data:image/jpeg;base64," + base64.b64encode(raw)
    assert len(url) > len(raw) + 1000  # the text is a third larger than the file
    exact = InputLimits(max_image_bytes=len(raw))
    load_pixels(url, SIZE, exact)  # at the limit by its decoded size: accepted
    load_pixels(base64.b64encode(raw), SIZE, exact)
    message = _refusal(url, InputLimits(max_image_bytes=len(raw) - 1))
    assert message == (
        f"IMAGE: is {len(raw)} bytes (decoded from its data URL), over the limit of "
        f"{len(raw) - 1} bytes"
    )
    message = _refusal(base64.b64encode(raw), InputLimits(max_image_bytes=len(raw) - 1))
    assert f"is {len(raw)} bytes (decoded from its base64 text)" in message


def test_the_header_check_reads_data_urls_too() -> None:
    """open_checked (the GPU path's eligibility check) sees the file, not the text."""
    raw = _raw("landscape_640x480_jpeg")
    image = open_checked(b"data:image/jpeg;base64," + base64.b64encode(raw), LIMITS)
    assert image.format == "JPEG" and image.size == (640, 480)


@pytest.mark.parametrize(
    "value",
    [
        b"a cat sitting on a mat",
        b"https://example.com/cat.jpg",
        base64.b64encode(b"plain text, base64-encoded, is still no image"),
        b"/tmp/cat.jpg",
    ],
)
def test_a_value_that_is_no_image_gets_the_json_hint(value: bytes) -> None:
    assert _refusal(value) == f"IMAGE: {NOT_AN_IMAGE}"
    assert NOT_AN_IMAGE.startswith(
        "not an image; over HTTP/JSON send raw bytes with the binary extension, or a "
        "data:image/...;base64 URL"
    )


def test_a_data_url_is_decoded_once_only() -> None:
    """Its data must be the image file itself: a data URL (or base64) inside a data URL is
    refused, so every later reading of the decoded bytes takes them as the file."""
    png = TEST_IMAGES["tiny_50x40_png"].read_bytes()
    inner = b"data:image/png;base64," + base64.b64encode(png)
    assert image_bytes(inner, InputLimits()) == png
    for payload in (inner, base64.b64encode(png)):
        nested = b"data:image/png;base64," + base64.b64encode(payload)
        with pytest.raises(InvalidInputError, match="data is not a JPEG, PNG"):
            image_bytes(nested, InputLimits())
    assert image_bytes(png, InputLimits()) is png  # a file is taken as it is, again and again
