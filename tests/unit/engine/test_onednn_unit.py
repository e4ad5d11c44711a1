"""onednn.py: the same linear layers through oneDNN, chosen once per engine."""

from __future__ import annotations

import pytest
import torch
from ofa_ve_engine.onednn import Linear, choose_linear_backend, onednn_is_faster
from torch import nn

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Linear(16, 32), nn.ReLU(), Linear(32, 8))


@needs_onednn
def test_onednn_gives_the_same_numbers() -> None:
    net, x = _net(), torch.randn(3, 5, 16)
    with torch.inference_mode():
        want = net(x)
        assert choose_linear_backend(net, torch.device("cpu"), torch.float32, "onednn") == "onednn"
        assert all(m.onednn for m in net.modules() if isinstance(m, Linear))
        torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)


def test_aten_and_auto_choices() -> None:
    net = _net()
    assert choose_linear_backend(net, torch.device("cpu"), torch.float32, "aten") == "aten"
    assert not any(m.onednn for m in net.modules() if isinstance(m, Linear))
    # auto never picks oneDNN outside CPU float32, and answers with a valid name inside it
    assert choose_linear_backend(net, torch.device("cpu"), torch.bfloat16, "auto") == "aten"
    assert choose_linear_backend(net, torch.device("cpu"), torch.float32) in ("onednn", "aten")
    assert isinstance(onednn_is_faster(d_model=16, ffn=32, rows=8), bool)


def test_bad_backends_are_refused() -> None:
    with pytest.raises(ValueError, match="linear backend must be one of"):
        choose_linear_backend(_net(), torch.device("cpu"), torch.float32, "mkl")
    with pytest.raises(ValueError, match="needs a CPU device, float32"):
        choose_linear_backend(_net(), torch.device("cpu"), torch.float16, "onednn")


def test_linear_keeps_nn_linear_state_dict_keys() -> None:
    assert set(Linear(2, 3).state_dict()) == set(nn.Linear(2, 3).state_dict())
