"""resnet.py: ModelScope's stem layout, and BatchNorm folding exact up to float rounding."""

from __future__ import annotations

import torch
from ofa_ve_engine.demo_checkpoint import diversify_constant_tensors
from ofa_ve_engine.resnet import ResNet, fold_batchnorm
from torch import nn


def _stem() -> ResNet:
    torch.manual_seed(0)
    stem = ResNet((1, 1, 1))
    diversify_constant_tensors(stem, seed=1)  # BatchNorm statistics that are not identity
    return stem.eval()


def test_layout_and_output_shape() -> None:
    stem = _stem()
    keys = set(stem.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight"} <= keys
    assert "layer3.0.bn3.num_batches_tracked" in keys
    with torch.no_grad():
        out = stem(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, ResNet.out_channels, 4, 4)  # stride 16


@torch.no_grad()
def test_folding_matches_eager_batchnorm() -> None:
    stem = _stem()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    want = stem(images)
    fold_batchnorm(stem)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in stem.modules())
    assert all(m.bias is not None for m in stem.modules() if isinstance(m, nn.Conv2d))
    torch.testing.assert_close(stem(images), want, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_folding_puts_the_stem_in_eval_mode() -> None:
    stem = _stem().train()
    fold_batchnorm(stem)
    assert not stem.training
