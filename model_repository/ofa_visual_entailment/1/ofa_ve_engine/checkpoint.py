"""Loading ``pytorch_model.bin`` into our network: safely, strictly, with clear errors.

``torch.load(weights_only=True)`` never unpickles code, so a hostile checkpoint
cannot run anything. Loading is strict: a missing or unexpected weight is an
error that names the keys. Two relaxations follow what transformers'
``from_pretrained`` does for ModelScope's OFAModel: a ``model.`` prefix on every
key is dropped, and the three names of the one shared token embedding
(encoder, decoder, output projection) may be stored once. Position-bucket
buffers are recomputed by the network and may be absent; if present they must
equal what the network computes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError
from .modeling import OFAModel
from .settings import CONFIG_FILE, WEIGHTS_FILE, OFAArchitecture

_SHARED_EMBEDDING_KEYS = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.output_projection.weight",
)
_DERIVED_BUFFERS = (
    "encoder.image_rp_bucket",
    "encoder.token_rp_bucket",
    "decoder.image_position_idx",
    "decoder.image_rp_bucket",
    "decoder.token_rp_bucket",
)


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``; every failure names the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt, or not a PyTorch state dict: {first}"
        ) from None
    except Exception as e:  # pickle errors for objects weights_only refuses
        raise CheckpointError(f"{path} could not be loaded safely (weights_only): {e}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return state


def normalize_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Apply the relaxations transformers applies when loading ModelScope's OFAModel."""
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items()}
    present = [k for k in _SHARED_EMBEDDING_KEYS if k in state and k in expected]
    if present:
        for key in _SHARED_EMBEDDING_KEYS:
            if key in expected and key not in state:
                state[key] = state[present[0]]
    return state


def load_weights(model: OFAModel, path: Path) -> None:
    """Strictly load ``path`` into ``model``; errors name missing and unexpected keys."""
    expected_state = model.state_dict()
    state = normalize_keys(read_state_dict(path), set(expected_state))
    missing = sorted(set(expected_state) - set(state) - set(_DERIVED_BUFFERS))
    unexpected = sorted(set(state) - set(expected_state))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing weights: {_describe(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights: {_describe(unexpected)}")
        raise CheckpointError(
            f"{path} does not match the network described by {CONFIG_FILE}: " + "; ".join(parts)
        )
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected_state.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong_shape:
        raise CheckpointError(f"{path}: weights of the wrong shape: {_describe(wrong_shape)}")
    for key in _DERIVED_BUFFERS:
        if key in state and not torch.equal(state[key], expected_state[key]):
            raise CheckpointError(f"{path}: buffer {key} differs from the one OFA computes")
    for key in _DERIVED_BUFFERS:
        state.setdefault(key, expected_state[key])
    model.load_state_dict(state, strict=True)


def load_model(model_dir: Path) -> OFAModel:
    """Build the network from ``config.json`` and strictly load its weights (on CPU, fp32)."""
    arch = OFAArchitecture.from_config_json(model_dir / CONFIG_FILE)
    model = OFAModel(arch)
    load_weights(model, model_dir / WEIGHTS_FILE)
    return model.eval()
