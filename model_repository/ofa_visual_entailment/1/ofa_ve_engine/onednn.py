"""Linear layers through oneDNN on CPU, where that is the faster library.

Why: in this torch build an fp32 ``F.linear`` on CPU is MKL's sgemm, and MKL does
not use its AVX-512 kernels on AMD processors, where oneDNN (which torch also
ships, and uses for convolutions and bf16) runs the encoder's matmuls about twice
as fast (docs/benchmarks.md). Linear layers are a large share of a CPU forward
pass, so the choice matters.

``Linear`` is ``nn.Linear`` with the same parameters and state-dict keys, plus a
switch. ``choose_linear_backend`` decides once per engine: ``aten`` (always
right, the default on GPUs and for other dtypes), ``onednn``, or ``auto``, which
checks that oneDNN gives the same numbers as ``F.linear`` and times both on an
encoder-sized matmul, taking oneDNN only where it is faster (so an Intel CPU
where MKL is at its best keeps MKL).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from .parameters import LINEAR_BACKENDS as BACKENDS  # the names config.pbtxt accepts


def _onednn_op():
    """oneDNN's fused linear (what inductor emits), or None where this torch lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


class Linear(nn.Linear):
    """``nn.Linear`` that runs through oneDNN when ``onednn`` is set (CPU, float32)."""

    onednn: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def onednn_is_faster(d_model: int = 256, ffn: int = 1024, rows: int = 930) -> bool:
    """Whether oneDNN agrees with ``F.linear`` and beats it on an encoder FFN matmul.

    A wrong result (beyond float rounding) counts as "not faster".
    """
    op = _onednn_op()
    if op is None:
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_model, generator=generator)
    weight = torch.randn(ffn, d_model, generator=generator) * d_model**-0.5
    bias = torch.randn(ffn, generator=generator)
    with torch.inference_mode():
        try:
            got = op(x, weight, bias, "none", [], "")
        except RuntimeError:
            return False
        want = F.linear(x, weight, bias)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            return False
        onednn = _best_seconds(lambda: op(x, weight, bias, "none", [], ""), 5)
        aten = _best_seconds(lambda: F.linear(x, weight, bias), 5)
    return onednn < 0.8 * aten


def choose_linear_backend(
    model: nn.Module, device: torch.device, dtype: torch.dtype, backend: str = "auto"
) -> str:
    """Set every ``Linear`` of ``model`` to the chosen backend; return its name."""
    if backend not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {backend!r}")
    eligible = device.type == "cpu" and dtype == torch.float32
    if backend == "onednn":
        if not eligible or _onednn_op() is None:
            raise ValueError(
                "linear backend 'onednn' needs a CPU device, float32 and a torch with oneDNN"
            )
        use = True
    else:
        use = backend == "auto" and eligible and onednn_is_faster()
    for module in model.modules():
        if isinstance(module, Linear):
            module.onednn = use
    return "onednn" if use else "aten"
