"""The ResNet stem through oneDNN's fused convolutions, on CPU, without a compiler.

Why: eager PyTorch runs a Bottleneck as seven kernels (conv, ReLU, conv, ReLU,
conv, add, ReLU). The adds and ReLUs are extra passes over activations of up to
256 x 120 x 120 floats, and every convolution reorders its weight into oneDNN's
blocked layout on every call. oneDNN's fused operators (``torch.ops.mkldnn``, the
ones inductor emits with ``freezing``) do conv+ReLU and conv+add+ReLU in one pass,
with the weights reordered once, here, at load: faster, with identical float32
outputs (docs/benchmarks.md). It is what ``compile`` gets from
inductor for the convolutions, without a C++ compiler and seconds of start-up.

``OneDNNStem`` wraps a ResNet whose BatchNorms are folded (``fold_batchnorm``).

``OneDNNGraphStem`` goes further: the folded stem traced and frozen for TorchScript's
oneDNN Graph fuser, which hands oneDNN whole partitions of the graph, compiled once per
input shape. At one image, torch's own cost around each fused convolution (dispatch,
descriptors, allocation) is a large share of the oneDNN stem's time; the graph runs
without it (docs/benchmarks.md).

``choose_stem_backend`` builds one where it is eligible (CPU, float32 or bfloat16, a
torch with these operators) and checks, on one small random image, that it gives the
eager stem's features within the dtype's rounding, before the engine uses it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from .parameters import STEM_BACKENDS as BACKENDS  # the names config.pbtxt accepts
from .resnet import Bottleneck, ResNet

DTYPES = (torch.float32, torch.bfloat16)
_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}
"""Largest difference from the eager stem accepted at load, relative to its largest feature."""


def _ops_available() -> bool:
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_convolution_pointwise")
        and hasattr(mkldnn, "_reorder_convolution_weight")
    )


def _is_folded(resnet: ResNet) -> bool:
    """Every BatchNorm folded into its convolution (as ``fold_batchnorm`` leaves it)."""
    return not any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())


class _Conv:
    """One convolution's geometry and its weight, reordered for oneDNN once."""

    def __init__(self, conv: nn.Conv2d, input_size: list[int]) -> None:
        self.bias = conv.bias
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(
            conv.weight.detach(), *self.geometry, input_size
        )

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        attr = "relu" if relu else "none"
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, *self.geometry, attr, [], ""
        )

    def add_relu(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """relu(conv(x) + residual) in one pass."""
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.weight, self.bias, *self.geometry, "add", 1.0, "relu", [], ""
        )


class OneDNNStem:
    """A callable stand-in for a folded ``ResNet`` (``[B, 3, P, P] -> [B, 1024, P/16, P/16]``).

    It shares the ResNet's biases and keeps reordered copies of its conv weights
    (the stem's weights once more in memory: 34 MB in float32). The weights are
    reordered for one image of ``image_size``; other batch sizes give the same
    results (oneDNN adapts).
    """

    def __init__(self, resnet: ResNet, image_size: int) -> None:
        if not _is_folded(resnet):
            raise ValueError("the oneDNN stem needs a ResNet with its BatchNorms folded")
        self._maxpool = resnet.maxpool
        size = [1, 3, image_size, image_size]
        self._conv1 = _Conv(resnet.conv1, size)
        size = self._shape_after(resnet.conv1, size)
        size = [1, size[1], (size[2] - 1) // 2 + 1, (size[3] - 1) // 2 + 1]  # max-pool 3/2, pad 1
        self._blocks: list[tuple[_Conv, _Conv, _Conv, _Conv | None]] = []
        for stage in (resnet.layer1, resnet.layer2, resnet.layer3):
            for block in stage:
                assert isinstance(block, Bottleneck)
                c1 = _Conv(block.conv1, size)
                mid = self._shape_after(block.conv1, size)
                c2 = _Conv(block.conv2, mid)
                mid = self._shape_after(block.conv2, mid)
                c3 = _Conv(block.conv3, mid)
                down = None
                if block.downsample is not None:
                    down = _Conv(block.downsample[0], size)
                size = self._shape_after(block.conv3, mid)
                self._blocks.append((c1, c2, c3, down))

    @staticmethod
    def _shape_after(conv: nn.Conv2d, size: list[int]) -> list[int]:
        def out(n: int, k: int, s: int, p: int, d: int) -> int:
            return (n + 2 * p - d * (k - 1) - 1) // s + 1

        h = out(size[2], conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0])
        w = out(size[3], conv.kernel_size[1], conv.stride[1], conv.padding[1], conv.dilation[1])
        return [size[0], conv.out_channels, h, w]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self._maxpool(self._conv1(images, relu=True))
        for c1, c2, c3, down in self._blocks:
            residual = x if down is None else down(x)
            x = c3.add_relu(c2(c1(x, relu=True), relu=True), residual)
        return x


class OneDNNGraphStem:
    """A callable stand-in for a folded ``ResNet``: traced, frozen and run by TorchScript's
    oneDNN Graph fuser. Each new batch size is profiled and compiled on its first calls;
    ``batch_sizes`` are done here, at load."""

    WARM_CALLS = 3
    """Calls at a new shape before TorchScript runs the fused graph (two profile it)."""

    def __init__(
        self, resnet: ResNet, image_size: int, dtype: torch.dtype,
        batch_sizes: Iterable[int] = (1, 2),
    ) -> None:
        if not _is_folded(resnet):
            raise ValueError("the oneDNN Graph stem needs a ResNet with its BatchNorms folded")
        torch.jit.enable_onednn_fusion(True)  # process-wide; read by TorchScript graphs only
        example = torch.zeros(1, 3, image_size, image_size, dtype=dtype)
        example = example.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's notices about its own future
            self._module = torch.jit.freeze(torch.jit.trace(resnet.eval(), example))
        for size in batch_sizes:
            batch = example.expand(size, -1, -1, -1).contiguous(memory_format=torch.channels_last)
            for _ in range(self.WARM_CALLS):
                self(batch)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._module(images)


def _graph_fuser_available() -> bool:
    return hasattr(torch.jit, "enable_onednn_fusion") and torch.backends.mkldnn.is_available()


def stem_is_eligible(resnet: ResNet, device: torch.device, dtype: torch.dtype) -> bool:
    """CPU, float32 or bfloat16, folded BatchNorms and a torch with the fused operators."""
    return device.type == "cpu" and dtype in DTYPES and _is_folded(resnet) and _ops_available()


CHECK_IMAGE_SIZE = 64
"""Side of the random image the load-time check runs (the same operators as at full size,
in a fiftieth of the time at 480)."""


@torch.inference_mode()
def _agrees(stem: OneDNNStem | OneDNNGraphStem, resnet: ResNet, dtype: torch.dtype) -> bool:
    generator = torch.Generator().manual_seed(0)
    size = CHECK_IMAGE_SIZE
    image = torch.randn(1, 3, size, size, generator=generator).to(dtype)
    image = image.contiguous(memory_format=torch.channels_last)
    want = resnet(image).float()
    calls = OneDNNGraphStem.WARM_CALLS if isinstance(stem, OneDNNGraphStem) else 1
    for _ in range(calls):  # the graph stem's compiled run is the last
        got = stem(image).float()
    scale = float(want.abs().max()) or 1.0
    return got.shape == want.shape and float((got - want).abs().max()) <= _TOLERANCE[dtype] * scale


def choose_stem_backend(
    resnet: ResNet,
    device: torch.device,
    dtype: torch.dtype,
    image_size: int,
    backend: str = "auto",
) -> OneDNNStem | OneDNNGraphStem | None:
    """The stem's runner, or None where the eager modules run.

    Args:
        resnet: the folded stem; its weights are reordered for one image.
        device, dtype: where and in what it runs (oneDNN: CPU, float32 or bfloat16).
        image_size: the side of the images it will see.
        backend: ``onednn_graph`` or ``onednn`` (ValueError where it cannot run),
            ``auto`` (the first of them that runs here and agrees with the eager stem
            at load) or ``aten`` (None).
    """
    if backend not in BACKENDS:
        raise ValueError(f"stem backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "aten":
        return None
    eligible = stem_is_eligible(resnet, device, dtype)
    if backend != "auto" and not eligible:
        raise ValueError(
            f"stem backend {backend!r} needs a CPU device, float32 or bfloat16, folded "
            "BatchNorms and a torch with oneDNN's fused convolutions"
        )
    if not eligible:
        return None
    graph = _graph_fuser_available()
    if backend == "onednn_graph" and not graph:
        raise ValueError("stem backend 'onednn_graph' needs a torch with TorchScript's "
                         "oneDNN Graph fuser (torch.jit.enable_onednn_fusion)")
    builders = {
        "onednn_graph": lambda: OneDNNGraphStem(resnet, image_size, dtype),
        "onednn": lambda: OneDNNStem(resnet, image_size),
    }
    tried = [backend] if backend != "auto" else [*(["onednn_graph"] if graph else []), "onednn"]
    for name in tried:
        try:
            stem = builders[name]()
            agrees = _agrees(stem, resnet, dtype)
        except RuntimeError:  # an operator this build of oneDNN refuses
            if backend != "auto":
                raise
            continue
        if agrees:
            return stem
        if backend != "auto":
            raise ValueError(f"the {name} stem does not agree with the eager stem here")
    return None
