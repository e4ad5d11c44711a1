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

IMAGES_DIR = Path(__file__).resolve().parents[1] / "data" / "images"
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


def _decoder_with(monkeypatch: pytest.MonkeyPatch, decode) -> gpu_image.GpuImageDecoder:
    real, rgb = gpu_image._decode_jpeg()
    monkeypatch.setattr(gpu_image, "_decode_jpeg", lambda: (decode or real, rgb))
    return gpu_image.GpuImageDecoder(SIZE, LIMITS, "cpu")


def _jpegs() -> list[bytes]:
    return [p.read_bytes() for p in FILES if device_eligible(p.read_bytes(), LIMITS)]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (RuntimeError("nvjpeg: decoder handle creation failed"), "decoder_error"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), "out_of_memory"),
    ],
)
def test_a_decoder_failure_turns_the_decoder_off_counted_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure, reason
) -> None:
    calls = []

    def broken(encoded, **kwargs):
        calls.append(len(encoded))
        raise failure

    decoder = _decoder_with(monkeypatch, broken)
    datas = _jpegs()
    with caplog.at_level("WARNING", logger="ofa_ve_engine"):
        first, errors = decoder.load(datas)
        second, _ = decoder.load(datas)
    assert not errors and decoder.off_reason == reason
    for data, pixels in zip(datas, first.numpy(), strict=True):  # the exact route's pixels
        assert np.array_equal(pixels, load_pixels(data, SIZE, LIMITS))
    assert torch.equal(first, second)
    assert decoder.take_fallbacks() == {reason: 2 * len(datas)}
    assert decoder.take_fallbacks() == {}  # taken: counted once
    turned_off = [r for r in caplog.records if "turned off" in r.getMessage()]
    assert len(turned_off) == 1 and reason in turned_off[0].getMessage()
    # Off means off: the second load did not try the device again (not N+1 calls a batch).
    assert len(calls) == (2 if reason == "decoder_error" else 1)  # the batch (+ the probe)


def test_missing_nvjpeg_turns_the_engine_decoder_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    decoder = gpu_image.GpuImageDecoder(SIZE, LIMITS, "cpu")
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    datas = _jpegs()
    with caplog.at_level("WARNING", logger="ofa_ve_engine"):
        decoder.load(datas)
        decoder.load(datas[:1])
    assert decoder.off_reason == "no_nvjpeg"
    assert decoder.take_fallbacks() == {"no_nvjpeg": len(datas) + 1}
    assert sum("turned off" in r.getMessage() for r in caplog.records) == 1


def test_files_the_device_refuses_take_the_cpu_route_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    datas = _jpegs()
    refused = {datas[0], datas[2]}
    real, _ = gpu_image._decode_jpeg()

    def picky(encoded, **kwargs):
        if any(bytes(t.numpy()) in refused for t in encoded):
            raise RuntimeError("nvjpegDecode: unsupported bitstream")
        return real(encoded, **kwargs)

    decoder = _decoder_with(monkeypatch, picky)
    with caplog.at_level("WARNING", logger="ofa_ve_engine"):
        pixels, errors = decoder.load(datas)
    assert not errors and decoder.off_reason is None
    assert decoder.take_fallbacks() == {"bad_file": 2}
    assert decoder.decoded == len(datas) - 2
    for data in refused:
        i = datas.index(data)
        assert np.array_equal(pixels[i].numpy(), load_pixels(data, SIZE, LIMITS))
    assert sum("nvJPEG refused" in r.getMessage() for r in caplog.records) == 1


def test_large_photos_are_decoded_in_bounded_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    datas = _jpegs()
    whole, _ = gpu_image.GpuImageDecoder(SIZE, LIMITS, "cpu").load(datas)
    real, _ = gpu_image._decode_jpeg()
    batches: list[int] = []

    def counting(encoded, **kwargs):
        batches.append(len(encoded))
        return real(encoded, **kwargs)

    decoder = _decoder_with(monkeypatch, counting)
    monkeypatch.setattr(gpu_image, "CHUNK_PIXELS", 700 * 500)  # about one photo at a time
    chunked, _ = decoder.load(datas)
    assert torch.equal(chunked, whole)
    assert len(batches) > 1 and sum(batches) == len(datas)


def test_out_of_memory_while_retrying_files_one_by_one_turns_the_decoder_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch refused, then the device out of memory on a single file: not the file's
    fault, so it is counted as out_of_memory and the decoder goes off (not bad_file)."""

    def failing(encoded, **kwargs):
        if len(encoded) > 1:
            raise RuntimeError("nvjpegDecode: batch refused")
        if len(bytes(encoded[0].numpy())) < 2000:  # the health probe is a tiny JPEG
            return real[0](encoded, **kwargs)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    real = gpu_image._decode_jpeg()
    monkeypatch.setattr(gpu_image, "_decode_jpeg", lambda: (failing, real[1]))
    decoder = gpu_image.GpuImageDecoder(SIZE, LIMITS, "cpu")
    datas = _jpegs()
    pixels, errors = decoder.load(datas)
    assert not errors and decoder.off_reason == "out_of_memory"
    assert decoder.take_fallbacks() == {"out_of_memory": len(datas)}
    for data, row in zip(datas, pixels.numpy(), strict=True):
        assert np.array_equal(row, load_pixels(data, SIZE, LIMITS))
