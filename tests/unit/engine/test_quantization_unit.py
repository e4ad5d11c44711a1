"""quantization.py: int8 for the ResNet stem on CPU, refused where it cannot pay, and
features close to float32's where it runs (on the tiny network, real torch kernels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ofa_ve_data.workload import TEST_IMAGES
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.cpu_features import INT8_FLAGS, cpu_flags
from ofa_ve_engine.limits import InputLimits
from ofa_ve_engine.quantization import (
    CALIBRATION_DIR,
    MIN_FEATURE_COSINE,
    Int8Stem,
    calibration_photos,
    check_quantization,
    quantize_stem,
)

CPU = torch.device("cpu")
VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})


@pytest.mark.parametrize("flag", INT8_FLAGS)
def test_int8_loads_on_a_cpu_with_any_int8_instruction(flag: str) -> None:
    check_quantization("int8", CPU, torch.float32, flags=frozenset({"avx2", flag}))
    check_quantization("none", torch.device("cuda"), torch.bfloat16, compile=True)  # no checks


@pytest.mark.parametrize(
    ("device", "dtype", "compile", "flags", "message"),
    [
        (
            CPU,
            torch.float32,
            False,
            frozenset({"avx2", "avx512f", "avx512_bf16"}),
            "lacks amx_int8, avx512_vnni and avx_vnni",
        ),
        (torch.device("cuda:0"), torch.float32, False, VNNI, "for CPU instances .* cuda:0"),
        (CPU, torch.bfloat16, False, VNNI, "needs dtype float32 .* got bfloat16"),
        (CPU, torch.float16, False, VNNI, "needs dtype float32 .* got float16"),
        (CPU, torch.float32, True, VNNI, "compile true both replace"),
    ],
)
def test_int8_is_refused_where_it_cannot_run_as_asked(
    device, dtype, compile, flags, message
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        check_quantization("int8", device, dtype, compile=compile, flags=flags)
    assert "quantization" in str(caught.value)


def test_measurement_tools_may_skip_the_cpu_check_only() -> None:
    no_vnni = frozenset({"avx2"})
    check_quantization("int8", CPU, torch.float32, check_cpu=False, flags=no_vnni)
    with pytest.raises(ValueError, match="for CPU instances"):
        check_quantization("int8", torch.device("cuda"), torch.float32, check_cpu=False)
    with pytest.raises(ValueError, match="must be one of"):
        check_quantization("int4", CPU, torch.float32)


def test_the_shipped_calibration_photos_are_few_small_documented_jpegs() -> None:
    photos = calibration_photos()
    assert 4 <= len(photos) <= 12
    assert all(photo[:3] == b"\xff\xd8\xff" for photo in photos)  # JPEG
    assert sum(map(len, photos)) < 400_000
    readme = (CALIBRATION_DIR / "README.md").read_text()
    for path in sorted(CALIBRATION_DIR.glob("*.jpg")):
        assert path.name in readme, f"{path.name}: source and licence not in the README"


def test_no_photos_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no calibration photos"):
        calibration_photos(tmp_path)


def _images(engine: VisualEntailmentEngine, photos: list[bytes]) -> torch.Tensor:
    return engine.collate([engine.prepare(photo, "calibration") for photo in photos]).images


@pytest.fixture(scope="module")
def int8_engine(tiny_model_dir: Path) -> VisualEntailmentEngine:
    """The loader with quantization int8, on any CPU (the CPU check off, as measurement
    tools do; the check itself is tested above): calibrated on the shipped photos."""
    return VisualEntailmentEngine.from_model_dir(
        tiny_model_dir,
        device="cpu",
        linear_backend="aten",
        quantization="int8",
        check_cpu_dtype=False,
    )


@torch.inference_mode()
def test_int8_stem_features_are_close_to_float32(int8_engine: VisualEntailmentEngine) -> None:
    """On test photos calibration did not see."""
    int8, stem = int8_engine.model.encoder.stem_runner, int8_engine.model.encoder.stem
    assert isinstance(int8, Int8Stem)
    assert int8.photos == len(calibration_photos()) and int8.min_cosine >= MIN_FEATURE_COSINE
    unseen = _images(int8_engine, [path.read_bytes() for path in list(TEST_IMAGES.values())[:4]])
    got, want = int8(unseen), stem(unseen)
    assert got.shape == want.shape and got.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1), dim=1)
    assert float(cosine.min()) >= 0.98, cosine
    assert not torch.equal(got, want)  # it did run in int8


@torch.inference_mode()
def test_int8_stem_fuses_residual_adds_and_leaves_the_quantized_engine_as_it_was(
    int8_engine: VisualEntailmentEngine,
) -> None:
    """Each Bottleneck's last convolution, its residual add and ReLU are one kernel, which
    exists on oneDNN's quantised engine only: the stem switches to it per call and back."""
    kinds = {type(m).__name__ for m in int8_engine.model.encoder.stem_runner.module.modules()}
    assert {"ConvAddReLU2d", "ConvReLU2d"} <= kinds
    engines = [e for e in torch.backends.quantized.supported_engines if e != "onednn"]
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engines[0]
    try:
        images = _images(int8_engine, calibration_photos()[:1])
        assert int8_engine.model.encoder.stem_runner(images).shape[0] == 1
        assert torch.backends.quantized.engine == engines[0]
    finally:
        torch.backends.quantized.engine = previous


@torch.inference_mode()
def test_int8_stems_called_from_threads_at_once_all_answer(
    int8_engine: VisualEntailmentEngine,
) -> None:
    """The quantised engine is process-wide: one call's exit must not switch it back
    under another's running stem."""
    from concurrent.futures import ThreadPoolExecutor

    stem = int8_engine.model.encoder.stem_runner
    images = _images(int8_engine, calibration_photos()[:1])[..., :64, :64].contiguous()
    want = stem(images)
    other = next(e for e in torch.backends.quantized.supported_engines if e != "onednn")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = other  # what each call's exit switches back to
    try:
        with ThreadPoolExecutor(4) as pool:
            for got in pool.map(lambda _: stem(images), range(400)):
                assert torch.equal(got, want)
    finally:
        torch.backends.quantized.engine = previous


def test_a_stem_that_loses_its_features_is_refused(tiny_engine: VisualEntailmentEngine) -> None:
    images = _images(tiny_engine, calibration_photos()[:1])
    with pytest.raises(ValueError, match="does not keep its features"):
        quantize_stem(tiny_engine.model.encoder.stem, images, min_cosine=1.01)


def test_the_loaded_engine_predicts_with_the_int8_stem(
    int8_engine: VisualEntailmentEngine, tiny_engine: VisualEntailmentEngine, tiny_items: list
) -> None:
    assert (int8_engine.quantization, int8_engine.stem_backend) == ("int8", "int8")
    assert int8_engine.describe_quantization().startswith("int8 ResNet stem, calibrated")
    assert (tiny_engine.quantization, tiny_engine.describe_quantization()) == ("none", "none")
    assert int8_engine.dtype == torch.float32
    int8_engine.warmup((1, 2))
    probs = int8_engine.predict(tiny_items)
    assert probs.shape == (len(tiny_items), 3) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, tiny_engine.predict(tiny_items), atol=0.05)


def test_input_limits_that_refuse_a_calibration_photo_fail_the_load(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="calibration photo is over this model's input limits"):
        VisualEntailmentEngine.from_model_dir(
            tiny_model_dir,
            device="cpu",
            linear_backend="aten",
            quantization="int8",
            check_cpu_dtype=False,
            limits=InputLimits(max_image_pixels=10_000),
        )


def test_the_loader_refuses_before_loading(tiny_model_dir: Path) -> None:
    """On this CPU's flags (served: tests/functional/test_quantization_int8.py) and with a
    reduced dtype, refused before the weights are read."""
    load = VisualEntailmentEngine.from_model_dir
    if not cpu_flags().intersection(INT8_FLAGS):
        with pytest.raises(ValueError, match="without fast int8 kernels"):
            load(tiny_model_dir, device="cpu", quantization="int8")
    with pytest.raises(ValueError, match="needs dtype float32"):
        load(
            tiny_model_dir,
            device="cpu",
            dtype=torch.bfloat16,
            quantization="int8",
            check_cpu_dtype=False,
        )
    with pytest.raises(ValueError, match="compile true both replace"):
        load(tiny_model_dir, device="cpu", compile=True, quantization="int8")
