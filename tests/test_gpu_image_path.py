"""The opt-in GPU image path (``gpu_image.load_pixels_gpu``), run here on CPU tensors.

Why on CPU: the same code runs with ``device="cpu"`` (torchvision's CPU decode,
torch's antialiased bicubic), so its shape, fallbacks, error behaviour and how
far its pixels stray from the exact route are checked on every machine; the
CUDA test runs only where a GPU is present.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ofa_ve_engine import gpu_image
from ofa_ve_engine.errors import InvalidInputError
from ofa_ve_engine.gpu_image import device_eligible, load_pixels_gpu
from ofa_ve_engine.image import load_pixels
from ofa_ve_engine.limits import InputLimits
from PIL import Image

IMAGES_DIR = Path(__file__).resolve().parent / "data" / "images"
LIMITS = InputLimits()
SIZE = 480
FILES = sorted(IMAGES_DIR.iterdir())


def _all_bytes() -> list[bytes]:
    return [path.read_bytes() for path in FILES]


def test_shape_dtype_and_device() -> None:
    out = load_pixels_gpu(_all_bytes(), SIZE, LIMITS, device="cpu")
    assert out.shape == (len(FILES), SIZE, SIZE, 3)
    assert out.dtype == torch.uint8 and out.device.type == "cpu"
    assert load_pixels_gpu([], SIZE, LIMITS, device="cpu").shape == (0, SIZE, SIZE, 3)


def test_fallbacks_are_exact_and_jpegs_are_close() -> None:
    datas = _all_bytes()
    out = load_pixels_gpu(datas, SIZE, LIMITS, device="cpu").numpy()
    for path, data, pixels in zip(FILES, datas, out, strict=True):
        exact = load_pixels(data, SIZE, LIMITS)
        if device_eligible(data, LIMITS):
            diff = np.abs(pixels.astype(np.int16) - exact.astype(np.int16))
            assert diff.max() <= 4, path.name  # float vs fixed-point bicubic
            assert diff.mean() < 0.5, path.name
        else:
            assert np.array_equal(pixels, exact), path.name


def test_which_images_go_to_the_device() -> None:
    eligible = {p.name for p in FILES if device_eligible(p.read_bytes(), LIMITS)}
    assert "astronaut_640x480.jpg" in eligible
    assert "chelsea_300x500.jpg" in eligible
    for name in ("chelsea_cmyk.jpg", "coffee_exif_orientation6.jpg", "coffee_50x40.png"):
        assert name not in eligible


def test_grayscale_jpeg_decodes_to_three_equal_channels() -> None:
    buffer = io.BytesIO()
    Image.open(FILES[0]).convert("L").save(buffer, format="JPEG")
    out = load_pixels_gpu([buffer.getvalue()], SIZE, LIMITS, device="cpu")[0]
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 1], out[..., 2])


def test_a_bad_item_raises_the_exact_routes_error() -> None:
    good = FILES[0].read_bytes()
    with pytest.raises(InvalidInputError) as info:
        load_pixels_gpu([good, b"not an image"], SIZE, LIMITS, device="cpu")
    assert info.value.input_name == "IMAGE" and "not an image" in str(info.value)
    truncated = good[: len(good) // 2]
    with pytest.raises(InvalidInputError, match="IMAGE: could not be decoded"):
        load_pixels_gpu([good, truncated], SIZE, LIMITS, device="cpu")


def test_missing_torchvision_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    with pytest.raises(RuntimeError, match="torchvision") as info:
        load_pixels_gpu([FILES[0].read_bytes()], SIZE, LIMITS, device="cpu")
    assert "GPU image path" in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_cuda_decode_is_close_to_the_exact_route() -> None:
    datas = _all_bytes()
    out = load_pixels_gpu(datas, SIZE, LIMITS, device="cuda")
    assert out.device.type == "cuda" and out.shape == (len(datas), SIZE, SIZE, 3)
    for data, pixels in zip(datas, out.cpu().numpy(), strict=True):
        diff = np.abs(pixels.astype(np.int16) - load_pixels(data, SIZE, LIMITS).astype(np.int16))
        assert diff.mean() < 2.0  # nvJPEG's IDCT/upsampling are not libjpeg-turbo's


def test_hint_mentions_the_pinned_version() -> None:
    assert "torchvision==" in gpu_image.TORCHVISION_HINT
