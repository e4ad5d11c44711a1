"""OFA's image stem: ResNet stages 1-3 of Bottleneck blocks (1024 channels, stride 16).

Module and parameter names follow ModelScope's ``ofa/resnet.py`` so that
``encoder.embed_images.*`` keys load unchanged. Inference only: no drop-path.
``fold_batchnorm`` merges every BatchNorm into the convolution before it, which
is exact in eval mode up to float rounding and saves a pass over each
activation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free "same" convolution (a BatchNorm follows each)."""
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 convolutions with a residual, torchvision's v1.5 layout."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes
        self.conv1 = _conv(inplanes, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                _conv(inplanes, planes * self.expansion, 1, stride),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(identity + out)


class ResNet(nn.Module):
    """conv 7x7/2, max-pool/2, then three Bottleneck stages (64, 128, 256 planes)."""

    out_channels = 1024

    def __init__(self, layers: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        stages = []
        for planes, blocks, stride in zip((64, 128, 256), layers, (1, 2, 2), strict=True):
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


@torch.no_grad()
def fold_batchnorm(resnet: ResNet) -> None:
    """Fold each BatchNorm into its convolution in place, with PyTorch's own fusion.

    Call it after loading weights (the state-dict keys are the unfolded ones). The
    stem is put in eval mode first: folding bakes in the running statistics.
    """
    resnet.eval()
    pairs: list[tuple[nn.Module, str, str]] = [(resnet, "conv1", "bn1")]
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3):
        for block in stage:
            pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
    for owner, conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, bn_name))
        setattr(owner, conv_name, fused)
        setattr(owner, bn_name, nn.Identity())
