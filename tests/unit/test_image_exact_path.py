"""The exact CPU image route (``load_pixels``) gives the reference's pixels, bit for bit.

Why every case: the route replaces Pillow's JPEG decode with simplejpeg's and
replays EXIF transposes in numpy; a difference in any one (subsampling,
progressive, restart markers, gray, rotation) would silently change what the
model sees. The reference is ``resize_image(decode_image(data))``, today's code.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from ofa_ve_engine import image as image_module
from ofa_ve_engine.errors import InvalidInputError
from ofa_ve_engine.image import decode_image, load_pixels, resize_image, route_of
from ofa_ve_engine.limits import InputLimits
from PIL import Image

IMAGES_DIR = Path(__file__).resolve().parents[1] / "data" / "images"
LIMITS = InputLimits()
SIZE = 480


def _reference(data: bytes, size: int = SIZE, limits: InputLimits = LIMITS) -> np.ndarray:
    return resize_image(decode_image(data, limits), size)


def _assert_exact(data: bytes, size: int = SIZE) -> str:
    got = load_pixels(data, size, LIMITS)
    expected = _reference(data, size)
    assert got.dtype == np.uint8 and got.shape == (size, size, 3)
    assert got.flags.c_contiguous
    assert np.array_equal(got, expected)
    return route_of(data, size, LIMITS)


def _photo() -> Image.Image:
    return Image.open(IMAGES_DIR / "astronaut_640x480.jpg").convert("RGB")


def _jpeg(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("path", sorted(IMAGES_DIR.iterdir()), ids=lambda p: p.name)
@pytest.mark.parametrize("size", [SIZE, 384, 97])
def test_every_test_image_is_bit_identical(path: Path, size: int) -> None:
    _assert_exact(path.read_bytes(), size)


def test_plain_jpegs_take_the_fast_decoder_and_the_rest_fall_back() -> None:
    routes = {p.name: route_of(p.read_bytes(), SIZE, LIMITS) for p in IMAGES_DIR.iterdir()}
    assert routes["astronaut_640x480.jpg"] == "simplejpeg"
    assert routes["chelsea_300x500.jpg"] == "simplejpeg"  # progressive
    assert routes["coffee_exif_orientation6.jpg"] == "simplejpeg+exif6"
    assert routes["chelsea_cmyk.jpg"] == "pillow: JPEG in mode CMYK"
    assert routes["coffee_50x40.png"] == "pillow: format PNG"
    assert routes["chelsea_coffee_2frames.gif"] == "pillow: format GIF"


@pytest.mark.parametrize("size", [(1280, 960), (4000, 3000)], ids=["1280x960", "4000x3000"])
def test_large_generated_jpegs_are_bit_identical(size: tuple[int, int]) -> None:
    data = _jpeg(_photo().resize(size, Image.Resampling.BICUBIC), quality=90)
    assert _assert_exact(data) == "simplejpeg"


@pytest.mark.parametrize(
    "size", [(1, 1), (2, 3), (17, 9), (333, 211), (481, 479), (480, 480), (640, 480)]
)
@pytest.mark.parametrize("subsampling", [0, 1, 2], ids=["444", "422", "420"])
def test_odd_sizes_and_every_subsampling(size: tuple[int, int], subsampling: int) -> None:
    image = _photo().resize(size, Image.Resampling.BICUBIC)
    assert _assert_exact(_jpeg(image, quality=85, subsampling=subsampling)) == "simplejpeg"


@pytest.mark.parametrize(
    "options",
    [
        {"progressive": True},
        {"progressive": True, "subsampling": 0},
        {"optimize": True},
        {"restart_marker_blocks": 3},
        {"restart_marker_rows": 1, "subsampling": 1},
        {"quality": 100},
        {"quality": 5},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_encoder_options(options: dict[str, object]) -> None:
    image = _photo().resize((331, 247), Image.Resampling.BICUBIC)
    assert _assert_exact(_jpeg(image, **options)) == "simplejpeg"


def test_grayscale_jpeg_replicates_like_convert_rgb() -> None:
    data = _jpeg(_photo().convert("L").resize((301, 199)))
    assert _assert_exact(data) == "simplejpeg"


def test_cmyk_jpeg_falls_back_to_pillow() -> None:
    data = _jpeg(_photo().convert("CMYK").resize((120, 90)))
    assert _assert_exact(data) == "pillow: JPEG in mode CMYK"


@pytest.mark.parametrize("orientation", range(10))
def test_every_exif_orientation(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(_photo().resize((97, 61)), exif=exif.tobytes())
    route = _assert_exact(data)
    assert route == (f"simplejpeg+exif{orientation}" if 2 <= orientation <= 8 else "simplejpeg")


def test_xmp_orientation_is_honoured_like_exif_transpose() -> None:
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
        b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        b'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    data = _jpeg(_photo().resize((97, 61)), xmp=xmp)
    assert decode_image(data, LIMITS).size == (61, 97)
    _assert_exact(data)


def test_mpo_stays_on_pillow() -> None:
    frames = [_photo().resize((64, 48)), _photo().resize((64, 48)).rotate(90)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="MPO", save_all=True, append_images=frames[1:])
    assert _assert_exact(buffer.getvalue()) == "pillow: format MPO"


def test_trailing_garbage_and_corrupt_entropy_data_match_the_reference() -> None:
    data = _jpeg(_photo().resize((200, 150)), quality=90)
    _assert_exact(data + b"\x00garbage after EOI" * 10)
    corrupt = bytearray(data)
    middle = len(corrupt) // 2
    corrupt[middle : middle + 8] = b"\xff\xd0\x13\x37\xff\xd3\x00\x00"  # stray markers
    try:
        expected: np.ndarray | str = _reference(bytes(corrupt))
    except InvalidInputError as e:
        expected = str(e)
    try:
        got: np.ndarray | str = load_pixels(bytes(corrupt), SIZE, LIMITS)
    except InvalidInputError as e:
        got = str(e)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, np.ndarray) and np.array_equal(got, expected)


def _patch_sof_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header claiming width x height (the scan data unchanged)."""
    at = data.index(b"\xff\xc0")
    patched = bytearray(data)
    patched[at + 5 : at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(patched)


def _error(call: object) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        call()  # type: ignore[operator]
    return info.value


_SMALL = _jpeg(Image.new("RGB", (64, 48), (10, 200, 30)), quality=90)


@pytest.mark.parametrize(
    ("data", "limits", "fragment"),
    [
        (b"", LIMITS, "is empty (0 bytes)"),
        (b"not an image at all" * 4, LIMITS, "not an image"),
        (_SMALL[: len(_SMALL) // 2], LIMITS, "could not be decoded"),
        (_SMALL[:200], LIMITS, "could not be decoded"),
        (_SMALL, InputLimits(max_image_bytes=100), "over the limit of 100 bytes"),
        (_SMALL, InputLimits(max_image_pixels=1000), "= 3072 pixels, over the limit of 1000"),
        (_patch_sof_size(_SMALL, 8000, 6000), LIMITS, "= 48000000 pixels, over the limit"),
        (_patch_sof_size(_SMALL, 65000, 65000), LIMITS, "declares more pixels than the limit"),
    ],
    ids=[
        "empty",
        "text",
        "truncated-half",
        "truncated-header",
        "bytes",
        "pixels",
        "sof-48mp",
        "bomb",
    ],
)
def test_bad_input_raises_the_reference_error(
    data: bytes, limits: InputLimits, fragment: str
) -> None:
    expected = _error(lambda: decode_image(data, limits))
    got = _error(lambda: load_pixels(data, SIZE, limits))
    assert got.input_name == "IMAGE" and str(got) == str(expected)
    assert fragment in str(got)
    fast = _error(lambda: load_pixels(data, SIZE, limits, fast=True))
    assert str(fast) == str(expected)


def test_input_name_is_passed_through() -> None:
    assert _error(lambda: load_pixels(b"", SIZE, LIMITS, input_name="IMG2")).input_name == "IMG2"


def test_without_simplejpeg_everything_takes_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_module.jpeg, "simplejpeg", None)
    data = (IMAGES_DIR / "astronaut_640x480.jpg").read_bytes()
    assert _assert_exact(data) == "pillow: simplejpeg is not installed"


def test_fast_route_scales_only_large_jpegs_and_stays_close() -> None:
    small = (IMAGES_DIR / "astronaut_640x480.jpg").read_bytes()
    assert np.array_equal(load_pixels(small, SIZE, LIMITS, fast=True), _reference(small))
    assert route_of(small, SIZE, LIMITS, fast=True) == "simplejpeg"
    big = _jpeg(_photo().resize((4000, 3000), Image.Resampling.BICUBIC), quality=90)
    assert route_of(big, SIZE, LIMITS, fast=True) == "simplejpeg-scaled"
    fast = load_pixels(big, SIZE, LIMITS, fast=True)
    assert fast.shape == (SIZE, SIZE, 3) and fast.dtype == np.uint8
    diff = np.abs(fast.astype(np.int16) - _reference(big).astype(np.int16))
    assert diff.mean() < 2.0  # a different decode scale: close, not equal
