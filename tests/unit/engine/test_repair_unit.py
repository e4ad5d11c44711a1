"""repair.py: slightly damaged real photos that decode whole, and the damage that still
refuses. (That ModelScope's pipeline reads the repaired ones to the same pixels is
checked against its own code in test_parity_modelscope.)"""

from __future__ import annotations

import io

import numpy as np
import pytest
from ofa_ve_engine import InputLimits, repair
from ofa_ve_engine.errors import InvalidInputError
from ofa_ve_engine.image import decode_image, load_pixels
from PIL import Image
from support.hostile import payloads

LIMITS = InputLimits()
SIZE = 96  # the resize is not what is tested: a small one keeps this quick


def _photo() -> Image.Image:
    return Image.open(io.BytesIO(payloads.real_image("portrait_300x500_progressive_jpeg"))).convert(
        "RGB"
    )


def _jpeg(**params: object) -> bytes:
    return payloads.encode(_photo(), "JPEG", quality=90, **params)


def _photo_of(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _pixels(data: bytes) -> np.ndarray:
    return load_pixels(data, SIZE, LIMITS)


@pytest.mark.parametrize(
    "params",
    [{}, {"progressive": True}, {"subsampling": 0}, {"restart_marker_blocks": 1}],
    ids=["baseline", "progressive", "4:4:4", "restart-markers"],
)
def test_a_jpeg_missing_only_its_end_marker_decodes_as_the_intact_file(params: dict) -> None:
    intact = _jpeg(**params)
    damaged = payloads.without_end_marker(intact)
    assert repair.scans_complete(damaged)
    assert repair.jpeg_with_end_marker(damaged, "RGB") == intact
    assert np.array_equal(_pixels(damaged), _pixels(intact))
    assert np.array_equal(np.asarray(decode_image(damaged, LIMITS)), np.asarray(_photo_of(intact)))


def test_a_cmyk_jpeg_missing_its_end_marker_decodes_too() -> None:
    intact = payloads.real_image("cmyk_240x160_jpeg")
    damaged = payloads.without_end_marker(intact)
    assert np.array_equal(_pixels(damaged), _pixels(intact))


def test_a_progressive_jpeg_cut_at_a_scan_boundary_is_refused() -> None:
    """Each cut is a valid but coarser picture (the reference answers on it): we refuse,
    as for any file cut short."""
    intact = _jpeg(progressive=True)
    cuts = payloads.scan_boundaries(intact)
    assert len(cuts) >= 5
    for cut in cuts:
        assert not repair.scans_complete(intact[:cut])
        assert repair.jpeg_with_end_marker(intact[:cut], "RGB") is None
        with pytest.raises(InvalidInputError, match="IMAGE: could not be decoded"):
            _pixels(intact[:cut])


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_a_jpeg_cut_inside_its_data_is_refused(keep: float) -> None:
    intact = _jpeg()
    cut = payloads.truncated(intact, keep)
    assert repair.scans_complete(cut)  # the scan header is there; its data is not
    assert repair.jpeg_with_end_marker(cut, "RGB") is None  # libjpeg-turbo warns
    with pytest.raises(InvalidInputError, match="IMAGE: could not be decoded"):
        _pixels(cut)


def test_scans_complete_needs_a_frame_and_its_scans() -> None:
    intact = _jpeg()
    assert repair.scans_complete(intact)
    header_only = intact[: intact.index(b"\xff\xda")]
    assert not repair.scans_complete(header_only)
    assert not repair.scans_complete(b"\xff\xd8" + b"\x00" * 16)
    assert repair.jpeg_with_end_marker(b"\x89PNG", "RGB") is None


@pytest.mark.parametrize(
    ("kind", "body"),
    [(b"tEXt", b"Comment\x00written by a tool"), (b"gAMA", (45455).to_bytes(4, "big"))],
)
def test_a_png_with_a_bad_checksum_on_an_ancillary_chunk_decodes(kind: bytes, body: bytes) -> None:
    intact = payloads.with_chunk(payloads.encode(_photo(), "PNG"), kind, body)
    damaged = payloads.with_bad_checksum(intact, kind)
    assert damaged != intact
    assert repair.png_with_checksums(damaged) == intact
    assert repair.png_with_checksums(intact) is None  # nothing to repair
    assert np.array_equal(_pixels(damaged), _pixels(intact))


def test_a_png_with_a_bad_checksum_on_its_header_is_refused_as_a_png() -> None:
    damaged = payloads.with_bad_checksum(payloads.encode(_photo(), "PNG"), b"IHDR")
    assert repair.png_with_checksums(damaged) is None  # critical: not ours to repair
    with pytest.raises(InvalidInputError) as info:
        _pixels(damaged)
    assert str(info.value).startswith("IMAGE: is a PNG file that could not be read: ")
    assert "IHDR" in str(info.value)


def test_a_12_bit_jpeg_is_named_a_jpeg_in_its_refusal() -> None:
    data = payloads.with_precision(_jpeg(), 12)
    with pytest.raises(InvalidInputError) as info:
        _pixels(data)
    assert (
        str(info.value)
        == "IMAGE: is a JPEG file that could not be read: cannot handle 12-bit layers"
    )


def test_text_posing_as_an_image_is_still_not_an_image() -> None:
    with pytest.raises(InvalidInputError, match="not an image; over HTTP/JSON"):
        _pixels(b"GIF is what this text starts with, and nothing more." * 4)
