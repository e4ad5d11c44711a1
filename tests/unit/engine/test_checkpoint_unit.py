"""checkpoint.py: strict, safe loading with transformers' relaxations and named errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ofa_ve_engine import CheckpointError, OFAArchitecture
from ofa_ve_engine.checkpoint import load_model, load_weights, normalize_keys, read_state_dict
from ofa_ve_engine.modeling import OFAModel

SHARED = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.output_projection.weight",
)


@pytest.fixture(scope="module")
def state(tiny_model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(tiny_model_dir / "pytorch_model.bin", weights_only=True)


@pytest.fixture
def fresh(tiny_model_dir: Path) -> OFAModel:
    return OFAModel(OFAArchitecture.from_config_json(tiny_model_dir / "config.json"))


def _save(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    return path


def test_load_model_is_exact(tiny_model_dir: Path, state: dict[str, torch.Tensor]) -> None:
    model = load_model(tiny_model_dir)
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_prefix_shared_embedding_and_derived_buffers_are_relaxed(
    tmp_path: Path, state: dict[str, torch.Tensor], fresh: OFAModel
) -> None:
    slim = {f"model.{k}": v for k, v in state.items() if k not in SHARED[1:]}
    del slim["model.encoder.token_rp_bucket"]  # recomputed by the network
    load_weights(fresh, _save(tmp_path, slim))
    assert torch.equal(fresh.decoder.output_projection.weight, state[SHARED[0]])


def test_normalize_keys_only_strips_a_prefix_every_key_has() -> None:
    x = torch.zeros(1)
    assert set(normalize_keys({"model.a": x, "b": x}, set())) == {"model.a", "b"}
    filled = normalize_keys({"model.encoder.embed_tokens.weight": x}, set(SHARED))
    assert set(filled) == set(SHARED) and all(v is x for v in filled.values())


def test_missing_unexpected_and_reshaped_weights_are_named(
    tmp_path: Path, state: dict[str, torch.Tensor], fresh: OFAModel
) -> None:
    broken = dict(state)
    del broken["decoder.layers.0.fc2.bias"]
    broken["encoder.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_weights(fresh, _save(tmp_path, broken))
    assert "decoder.layers.0.fc2.bias" in str(info.value) and "encoder.extra" in str(info.value)
    reshaped = dict(state)
    reshaped["encoder.layers.0.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.fc1\.weight \(3, 3\)"):
        load_weights(fresh, _save(tmp_path, reshaped))


def test_a_wrong_derived_buffer_is_refused(
    tmp_path: Path, state: dict[str, torch.Tensor], fresh: OFAModel
) -> None:
    wrong = dict(state)
    wrong["decoder.token_rp_bucket"] = state["decoder.token_rp_bucket"] + 1
    with pytest.raises(CheckpointError, match=r"decoder\.token_rp_bucket differs"):
        load_weights(fresh, _save(tmp_path, wrong))


def test_unsafe_or_corrupt_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is missing"):
        read_state_dict(tmp_path / "none.bin")
    (tmp_path / "junk.bin").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(tmp_path / "junk.bin")
    torch.save({"a": [1, 2]}, tmp_path / "nested.bin")
    with pytest.raises(CheckpointError, match="flat state dict"):
        read_state_dict(tmp_path / "nested.bin")
