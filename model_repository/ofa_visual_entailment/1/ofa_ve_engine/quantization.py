"""int8 for the ResNet stem on CPU (``quantization int8``): calibrated at load.

Why: the stem's convolutions are most of a CPU item's float32 time. In int8 they run
on oneDNN's int8 kernels, which use the CPU's VNNI or AMX-INT8 instructions, several
times faster, with features close to float32's (docs/benchmarks.md). Only the stem:
dynamic int8 for the transformer's linear layers, and the int8 stem under a bfloat16
transformer, moved too many labels (docs/benchmarks.md), so the rest of the network
stays in float32 and ``dtype`` must be float32.

Why this API: torch's FX graph-mode post-training static quantisation
(``torch.ao.quantization.quantize_fx``) needs no compiler and no new dependency and
lowers to oneDNN's quantised kernels; with oneDNN's backend config it fuses each
convolution with its ReLU, and with its residual add and ReLU, into one kernel. torch
deprecates it in favour of torchao's pt2e flow, a new dependency; it works in the pinned
torch, so its warnings are silenced here, around its calls only.

Calibration: at load, on the real photos in ``calibration/`` next to this module (a
model repository copied alone has them; their sources and licences are in its
README), preprocessed exactly as requests are; torch's histogram observer sets each
activation's range. Nothing is kept across processes. Then the int8 stem's features
on those photos are compared with float32's, and a stem that does not keep them is
refused.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.fx
from torch import nn

from . import cpu_features
from .parameters import QUANTIZATIONS
from .resnet import ResNet

QUANTIZED_ENGINE = "onednn"
"""torch's quantised backend whose kernels are oneDNN's (VNNI/AMX int8); its default
qconfig uses the whole 8-bit range for activations (the ``x86`` one halves it)."""
CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
"""The calibration photos (JPEG), shipped inside the engine package."""
MIN_FEATURE_COSINE = 0.98
"""Smallest cosine similarity, per calibration photo, between the int8 stem's features
and float32's that a load accepts: a guard against a broken quantisation, not a
statement of accuracy (label agreement is measured with precision_agreement)."""


def check_quantization(
    quantization: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    compile: bool = False,
    check_cpu: bool = True,
    flags: frozenset[str] | None = None,
) -> None:
    """ValueError, before seconds of loading, where ``quantization`` cannot run as asked.

    int8 runs on CPU devices only (GPUs: not measured yet), under a float32 network,
    without ``compile`` (both would replace the stem), on a torch with oneDNN's
    quantised engine and, unless ``check_cpu`` is off (measurement tools), on a CPU with
    int8 dot-product instructions (``cpu_features.check_cpu_int8``; ``flags``: that
    CPU's, for tests).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    if quantization == "none":
        return
    if device.type != "cpu":
        raise ValueError(
            f"quantization int8 is for CPU instances (not measured on GPUs yet); this one "
            f"runs on {device}: use quantization none, or instance_group kind KIND_CPU"
        )
    if dtype != torch.float32:
        name = str(dtype).replace("torch.", "")
        raise ValueError(
            f"quantization int8 needs dtype float32 (the network around the int8 stem), "
            f"got {name}: with a reduced type the labels move too far (docs/benchmarks.md)"
        )
    if compile:
        raise ValueError(
            "quantization int8 and compile true both replace the ResNet stem: turn one off"
        )
    if QUANTIZED_ENGINE not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"quantization int8 needs torch's {QUANTIZED_ENGINE!r} quantized engine, which "
            "this torch build lacks"
        )
    if check_cpu:
        cpu_features.check_cpu_int8(flags)


def calibration_photos(folder: Path = CALIBRATION_DIR) -> list[bytes]:
    """The encoded calibration photos, in name order (FileNotFoundError if none)."""
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(
            f"no calibration photos (*.jpg) in {folder}: quantization int8 calibrates on "
            "them at load; restore the folder from the model repository"
        )
    return [path.read_bytes() for path in paths]


_ENGINE_LOCK = threading.RLock()


@contextlib.contextmanager
def _onednn_engine() -> Iterator[None]:
    """torch's quantised engine set to oneDNN's inside (the fused conv+add+ReLU exists
    only there), the previous one back after. The setting is process-wide, so one thread
    at a time: another's exit must not switch it back under a running stem."""
    with _ENGINE_LOCK:
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = QUANTIZED_ENGINE
        try:
            yield
        finally:
            torch.backends.quantized.engine = previous


@contextlib.contextmanager
def _quantization_api() -> Iterator[None]:
    """oneDNN's quantised engine, and the FX API's deprecation warnings silenced, for
    the calls inside only."""
    with _onednn_engine(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"(?s).*quantized tensor creation")
        yield


def _without_identities(resnet: ResNet) -> torch.fx.GraphModule:
    """The stem as an FX graph without the ``nn.Identity`` that ``fold_batchnorm`` left
    where each BatchNorm was, so that quantisation sees conv -> ReLU (and conv -> add ->
    ReLU) and fuses them: one int8 kernel each, and no 8-bit range spent on the negative
    values the ReLU drops."""
    graph_module = torch.fx.symbolic_trace(copy.deepcopy(resnet).float().eval())
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and isinstance(
            graph_module.get_submodule(node.target), nn.Identity
        ):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return graph_module


def _cosines(got: torch.Tensor, want: torch.Tensor) -> list[float]:
    similarity = nn.functional.cosine_similarity(got.flatten(1), want.flatten(1), dim=1)
    return [float(value) for value in similarity]


class Int8Stem:
    """A callable stand-in for the folded ``ResNet``: float32 images
    ``[B, 3, P, P]`` in, float32 features ``[B, 1024, P/16, P/16]`` out, int8 inside."""

    def __init__(self, module: nn.Module, photos: int, min_cosine: float) -> None:
        self.module = module
        self.photos = photos
        """How many photos calibrated it."""
        self.min_cosine = min_cosine
        """The smallest cosine, over those photos, between its features and float32's."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with _onednn_engine():
            return self.module(images)

    def describe(self) -> str:
        """For the instance's start-up log line."""
        return (
            f"int8 ResNet stem, calibrated at load on {self.photos} photos, features' cosine "
            f"to float32 >= {self.min_cosine:.4f}"
        )


def quantize_stem(
    resnet: ResNet, images: torch.Tensor, min_cosine: float = MIN_FEATURE_COSINE
) -> Int8Stem:
    """The int8 stem of a folded float32 ``resnet``, calibrated on ``images``.

    Args:
        resnet: the folded stem (``fold_batchnorm``) on the CPU, in float32; left as is.
        images: normalised calibration images ``[N, 3, P, P]``, as the engine feeds the
            stem (``engine.collate``); each calibrates, then checks, one at a time.
        min_cosine: ValueError where the int8 features of any of ``images`` have a
            smaller cosine similarity to the float32 features.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.backend_config import get_onednn_backend_config
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if images.shape[0] < 1:
        raise ValueError("quantize_stem needs at least one calibration image")
    with _quantization_api():
        graph_module = _without_identities(resnet)
        backend = get_onednn_backend_config()
        prepared = prepare_fx(
            graph_module,
            get_default_qconfig_mapping(QUANTIZED_ENGINE),
            example_inputs=(images[:1],),
            backend_config=backend,
        )
        with torch.no_grad():
            reference = [prepared(image) for image in images.split(1)]  # observes; float32
        converted = convert_fx(prepared, backend_config=backend)
        with torch.inference_mode():
            cosines = [
                cosine
                for image, want in zip(images.split(1), reference, strict=True)
                for cosine in _cosines(converted(image), want)
            ]
    worst = min(cosines)
    if not worst >= min_cosine:  # NaN fails too
        raise ValueError(
            f"the int8 ResNet stem does not keep its features on this checkpoint (cosine to "
            f"float32 {worst:.4f} on a calibration photo, below {min_cosine}): use "
            "quantization none"
        )
    return Int8Stem(converted, photos=images.shape[0], min_cosine=worst)
