"""The engine's performance options change how the work is done, never the answer.

Each option (ResNet chunking, oneDNN linear layers, per-item attention over real
lengths, a compiled ResNet stem) is compared with the plain path on the same
prepared items, which include padded texts of different lengths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ofa_ve_data.workload import TEST_IMAGES
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.modeling import _clamp_half
from ofa_ve_engine.onednn import Linear, choose_linear_backend

TEXTS = [
    ("A cat sleeps on a red sofa.", None),
    ("Nobody is here", "A photo of an empty street at night, with rain and neon lights."),
    ("The rocket stands on the launch pad, ready to fly to the moon and back.", "A photo."),
]
IMAGES = ["landscape_640x480_jpeg", "tiny_50x40_png", "wide_1024x256_jpeg"]


@pytest.fixture(scope="module")
def plain(demo_model_dir: Path) -> VisualEntailmentEngine:
    """No chunking, aten linear layers, batched attention with a padding bias; the oneDNN
    stem (the graph stem, seconds to build, is not what these tests compare)."""
    engine = VisualEntailmentEngine.from_model_dir(
        demo_model_dir, device="cpu", image_chunk_size=64, linear_backend="aten",
        stem_backend="onednn",
    )
    engine.attend_by_length = False
    return engine


def _variant(plain: VisualEntailmentEngine, **options: object) -> VisualEntailmentEngine:
    """An engine with other options over plain's network (no loading)."""
    engine = VisualEntailmentEngine(plain.settings, plain.tokenizer, plain.model, **options)
    engine.attend_by_length = False
    return engine


@pytest.fixture(scope="module")
def items(plain: VisualEntailmentEngine) -> list:
    out = [
        plain.prepare(TEST_IMAGES[name].read_bytes(), h, p)
        for name, (h, p) in zip(IMAGES, TEXTS, strict=True)
    ]
    assert len({len(item.input_ids) for item in out}) == len(out)  # padding in the batch
    return out


@pytest.fixture(scope="module")
def expected(plain: VisualEntailmentEngine, items: list) -> np.ndarray:
    return plain.predict(items)


def test_cpu_defaults_chunk_the_resnet_and_attend_by_length(
    demo_engine: VisualEntailmentEngine,
) -> None:
    assert demo_engine.image_chunk_size == 2
    assert demo_engine.attend_by_length
    assert demo_engine.linear_backend in ("onednn", "aten")
    assert demo_engine.forward_batch_size == 32 and not demo_engine.compiled


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 2])
def test_image_chunks_give_the_same_answers(
    plain: VisualEntailmentEngine, items: list, expected: np.ndarray, chunk: int
) -> None:
    engine = _variant(plain, image_chunk_size=chunk)
    np.testing.assert_allclose(engine.predict(items), expected, atol=1e-5)


def test_attention_by_length_gives_the_same_answers(
    plain: VisualEntailmentEngine, items: list, expected: np.ndarray
) -> None:
    engine = _variant(plain, image_chunk_size=64)
    engine.attend_by_length = True
    np.testing.assert_allclose(engine.predict(items), expected, atol=1e-5)


@pytest.mark.slow
def test_onednn_linear_gives_the_same_answers(
    demo_model_dir: Path, items: list, expected: np.ndarray
) -> None:
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    engine = VisualEntailmentEngine.from_model_dir(
        demo_model_dir, device="cpu", image_chunk_size=64, linear_backend="onednn"
    )
    engine.attend_by_length = False
    assert engine.linear_backend == "onednn"
    layers = [m for m in engine.model.modules() if isinstance(m, Linear)]
    assert layers and all(m.onednn for m in layers)
    np.testing.assert_allclose(engine.predict(items), expected, atol=1e-5)


def test_linear_backend_is_validated(plain: VisualEntailmentEngine) -> None:
    with pytest.raises(ValueError, match="linear backend"):
        choose_linear_backend(plain.model, torch.device("cpu"), torch.float32, "mkl")
    with pytest.raises(ValueError, match="onednn"):
        choose_linear_backend(plain.model, torch.device("cpu"), torch.bfloat16, "onednn")
    assert choose_linear_backend(plain.model, torch.device("cpu"), torch.float32, "aten") == "aten"


@pytest.mark.parametrize("chunk", [0, -1])
def test_bad_image_chunk_size_is_refused(
    plain: VisualEntailmentEngine, demo_model_dir: Path, chunk: int
) -> None:
    with pytest.raises(ValueError, match="image_chunk_size"):
        _variant(plain, image_chunk_size=chunk)
    with pytest.raises(ValueError, match="image_chunk_size"):  # before any loading
        VisualEntailmentEngine.from_model_dir(demo_model_dir, image_chunk_size=chunk)


def test_half_precision_guard_clamps_overflow_only() -> None:
    limit = torch.finfo(torch.float16).max - 1000
    x = torch.tensor([1.5, -2.0, float("inf"), float("-inf"), 60000.0], dtype=torch.float16)
    got = _clamp_half(x)
    assert got[:2].tolist() == [1.5, -2.0]
    assert got[2].item() == pytest.approx(limit, rel=1e-3)
    assert got[3].item() == pytest.approx(-limit, rel=1e-3)
    assert got[4].item() == 60000.0
    same = torch.tensor([float("inf")])
    assert _clamp_half(same) is same  # float32 untouched


@pytest.mark.slow
def test_compiled_stem_gives_the_same_answers(
    demo_model_dir: Path, items: list, expected: np.ndarray
) -> None:
    engine = VisualEntailmentEngine.from_model_dir(
        demo_model_dir, device="cpu", image_chunk_size=2, compile=True, linear_backend="aten"
    )
    engine.attend_by_length = False
    assert engine.compiled and engine.model.encoder.stem_runner is not None
    np.testing.assert_allclose(engine.predict(items), expected, atol=1e-5)


def test_position_table_grows_and_matches_a_fresh_one(plain: VisualEntailmentEngine) -> None:
    """Biases cached for short texts are rebuilt, not misused, when a longer text comes."""
    engine = _variant(plain)
    encoder = engine.model.encoder
    image = TEST_IMAGES["tiny_50x40_png"].read_bytes()
    long_text = " ".join(["a small cat sits on a wide red sofa near the window"] * 12)
    short = engine.prepare(image, "A cat.")
    long = engine.prepare(image, long_text)
    assert len(long.input_ids) > 64 + 16
    encoder._position_cache = None  # as freshly loaded
    engine.predict([short])
    first = encoder._position_cache.text_len
    got = engine.predict([long, short])
    assert encoder._position_cache.text_len >= len(long.input_ids) > first
    encoder._position_cache = None  # fresh: built for the long text first
    want = np.concatenate([engine.predict([long]), engine.predict([short])])
    np.testing.assert_allclose(got, want, atol=1e-5)
