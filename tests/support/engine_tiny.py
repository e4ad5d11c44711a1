"""The tiny OFA of the per-module engine tests: its config, its files, small inputs.

Why tiny: these tests check what each module does (shapes, keys, errors, that a
fast path equals the plain one), which a 32-wide, one-layer network with a
64-pixel ResNet-18 stem shows as well as OFA-tiny's 33M parameters, at a
fraction of the cost on the shared 2-core machines. The tokenizer is the demo
checkpoint's real byte-level BPE (59457 ids with OFA's added tokens), so the
engine's vocabulary check and answer tokens are the real ones.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ofa_ve_engine.demo_checkpoint import (
    ANSWER2LABEL,
    ANSWER_FILE,
    OFA_TINY_CONFIG,
    VISUAL_ENTAILMENT_CONFIGURATION,
    random_state_dict,
    write_tokenizer_files,
)
from ofa_ve_engine.settings import CONFIG_FILE, CONFIGURATION_FILE, WEIGHTS_FILE

from support.synthetic_images import png  # noqa: F401  (re-exported for the engine tests)

TINY_CONFIG: dict[str, object] = {
    **OFA_TINY_CONFIG,
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "resnet_type": "resnet18",  # OFA's "resnet18": 2+2+2 Bottleneck blocks
    "image_bucket_size": 8,  # 64 px / 16 = 4x4 patches fit
}
"""OFA-tiny's config.json with every size cut down (the vocabulary stays the real 59457)."""

TINY_PATCH_IMAGE_SIZE = 64
TINY_SEED = 3


def tiny_configuration() -> dict[str, object]:
    """The demo's configuration.json, with 64-pixel patches."""
    configuration = copy.deepcopy(VISUAL_ENTAILMENT_CONFIGURATION)
    model = configuration["model"]
    assert isinstance(model, dict)
    model["patch_image_size"] = model["max_image_size"] = TINY_PATCH_IMAGE_SIZE
    return configuration


def write_tiny_model_dir(out: Path, seed: int = TINY_SEED) -> Path:
    """A complete ModelScope-layout directory for the tiny architecture."""
    import torch

    out.mkdir(parents=True)
    (out / CONFIGURATION_FILE).write_text(json.dumps(tiny_configuration()))
    (out / CONFIG_FILE).write_text(json.dumps(TINY_CONFIG))
    (out / ANSWER_FILE).write_text(json.dumps(ANSWER2LABEL))
    write_tokenizer_files(out)
    torch.save(random_state_dict(out / CONFIG_FILE, seed), out / WEIGHTS_FILE)
    return out


TEXTS: list[tuple[str, str | None]] = [
    ("Two birds sit on a wire.", None),
    ("A well-known DOG runs / jumps!", None),
    ("Nobody is here", "A photo of an empty street at night, with rain and neon lights."),
    ("a <person> rides a horse", "someone outdoors"),
    ("The cat is black.", "The animal in the picture is a small cat sleeping on a sofa."),
]
"""Texts of different lengths (so batches are padded), with and without premises."""
