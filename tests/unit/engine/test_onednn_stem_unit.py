"""onednn_stem.py: the fused-convolution stem and the oneDNN Graph stem give the eager
stem's features, and are chosen only where they run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.demo_checkpoint import diversify_constant_tensors
from ofa_ve_engine.onednn_stem import (
    OneDNNGraphStem,
    OneDNNStem,
    choose_stem_backend,
    stem_is_eligible,
)
from ofa_ve_engine.resnet import ResNet, fold_batchnorm

CPU = torch.device("cpu")
SIZE = 64


def _folded(dtype: torch.dtype = torch.float32) -> ResNet:
    torch.manual_seed(0)
    stem = ResNet((1, 2, 1))  # a block with and without downsampling in a stage
    diversify_constant_tensors(stem, seed=1)
    fold_batchnorm(stem)
    return stem.to(dtype=dtype).to(memory_format=torch.channels_last).eval()


def _images(batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    images = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    return images.to(dtype).contiguous(memory_format=torch.channels_last)


needs_ops = pytest.mark.skipif(
    not stem_is_eligible(_folded(), CPU, torch.float32),
    reason="this torch has no oneDNN fused convolutions",
)


@needs_ops
@torch.inference_mode()
@pytest.mark.parametrize("batch", [1, 3])
def test_float32_features_equal_the_eager_stem(batch: int) -> None:
    resnet = _folded()
    stem = OneDNNStem(resnet, SIZE)  # weights reordered for one image; any batch runs
    images = _images(batch)
    torch.testing.assert_close(stem(images), resnet(images), atol=1e-5, rtol=1e-5)


needs_graph = pytest.mark.skipif(
    not hasattr(torch.jit, "enable_onednn_fusion"), reason="this torch has no oneDNN Graph fuser"
)


@needs_ops
@needs_graph
@torch.inference_mode()
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_stem_float32_features_equal_the_eager_stem(batch: int) -> None:
    """Batch 1 is compiled at load; batch 3 is new to it: profiled, then compiled, on the
    first calls, each answer the same."""
    resnet = _folded()
    stem = OneDNNGraphStem(resnet, SIZE, torch.float32, batch_sizes=(1,))
    images = _images(batch)
    for _ in range(OneDNNGraphStem.WARM_CALLS + 1):
        torch.testing.assert_close(stem(images), resnet(images), atol=1e-5, rtol=1e-5)


@needs_ops
@torch.inference_mode()
@pytest.mark.parametrize("runner", [OneDNNStem, OneDNNGraphStem])
def test_bfloat16_features_within_its_rounding(runner: type) -> None:
    if runner is OneDNNGraphStem and not hasattr(torch.jit, "enable_onednn_fusion"):
        pytest.skip("this torch has no oneDNN Graph fuser")
    resnet = _folded(torch.bfloat16)
    images = _images(2, torch.bfloat16)
    stem = runner(resnet, SIZE) if runner is OneDNNStem else runner(resnet, SIZE, torch.bfloat16)
    got, want = stem(images).float(), resnet(images).float()
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 5e-2 * float(want.abs().max())


def test_needs_folded_batchnorms() -> None:
    unfolded = ResNet((1, 1, 1)).eval()
    with pytest.raises(ValueError, match="BatchNorms folded"):
        OneDNNStem(unfolded, SIZE)
    with pytest.raises(ValueError, match="BatchNorms folded"):
        OneDNNGraphStem(unfolded, SIZE, torch.float32)
    assert not stem_is_eligible(unfolded, CPU, torch.float32)
    assert choose_stem_backend(unfolded, CPU, torch.float32, SIZE, "auto") is None
    with pytest.raises(ValueError, match="stem backend 'onednn' needs"):
        choose_stem_backend(unfolded, CPU, torch.float32, SIZE, "onednn")


def test_backend_choice() -> None:
    resnet = _folded()
    assert choose_stem_backend(resnet, CPU, torch.float32, SIZE, "aten") is None
    with pytest.raises(ValueError, match="must be one of"):
        choose_stem_backend(resnet, CPU, torch.float32, SIZE, "mkl")
    half = _folded(torch.float16)
    assert choose_stem_backend(half, CPU, torch.float16, SIZE, "auto") is None
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        choose_stem_backend(half, CPU, torch.float16, SIZE, "onednn")
    with pytest.raises(ValueError, match="'onednn_graph' needs"):
        choose_stem_backend(half, CPU, torch.float16, SIZE, "onednn_graph")
    assert not stem_is_eligible(resnet, torch.device("cuda"), torch.float32)
    if stem_is_eligible(resnet, CPU, torch.float32):
        graph = hasattr(torch.jit, "enable_onednn_fusion")  # auto: the graph stem first
        chosen = choose_stem_backend(resnet, CPU, torch.float32, SIZE)
        assert isinstance(chosen, OneDNNGraphStem if graph else OneDNNStem)
        chosen = choose_stem_backend(resnet, CPU, torch.float32, SIZE, "onednn")
        assert isinstance(chosen, OneDNNStem)


@needs_ops
@needs_graph
def test_engine_answers_equal_with_every_stem(tiny_model_dir, tiny_items) -> None:
    engines = {
        backend: VisualEntailmentEngine.from_model_dir(
            tiny_model_dir, device="cpu", linear_backend="aten", stem_backend=backend
        )
        for backend in ("auto", "onednn", "aten")
    }
    assert {b: e.stem_backend for b, e in engines.items()} == {
        "auto": "onednn_graph", "onednn": "onednn", "aten": "aten"}
    assert not engines["auto"].compiled
    eager = engines["aten"].predict(tiny_items)
    for backend in ("auto", "onednn"):
        np.testing.assert_allclose(engines[backend].predict(tiny_items), eager, atol=1e-5)
