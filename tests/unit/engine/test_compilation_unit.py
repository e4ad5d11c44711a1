"""compilation.py: a compiled stem, built at load time, failing with advice."""

from __future__ import annotations

import shutil

import pytest
import torch
from ofa_ve_engine.compilation import compile_stem
from torch import nn


class _Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("no kernels here")


@pytest.mark.slow
def test_failures_surface_at_compile_time_with_advice() -> None:
    with pytest.raises(RuntimeError, match="turn `compile` off") as info:
        compile_stem(_Broken(), example=torch.zeros(1, 3, 8, 8), batch_sizes=(1,))
    assert "batch size 1" in str(info.value)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on CPU")
def test_compiled_stem_equals_eager() -> None:
    """Slow (inductor compiles C++ for each batch size): marked so."""
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    run = compile_stem(stem, example=torch.zeros(1, 3, 8, 8), batch_sizes=(1, 2))
    images = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(run(images), stem(images), atol=1e-5, rtol=1e-5)
