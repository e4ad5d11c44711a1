"""Typed settings read from a ModelScope model directory, with OFA's defaults.

Two files matter: ``configuration.json`` (ModelScope's task config; the keys
under ``model`` steer preprocessing and scoring) and ``config.json`` (the
HF-style ``OFAConfig`` that fixes the network's shape). Every default below is
the one ModelScope 1.40.2 uses when the key is absent, so a checkpoint behaves
here as it does in ModelScope's pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import CheckpointError

CONFIGURATION_FILE = "configuration.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "pytorch_model.bin"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

DEFAULT_ANSWER2LABEL: dict[str, int] = {"no": 0, "yes": 1, "maybe": 2}
"""OFA's SNLI-VE answer order, used only when configuration.json names no answer file."""

_SUPPORTED_ACTIVATIONS = ("gelu", "relu", "gelu_new", "gelu_fast", "silu", "swish")
_RESNET_LAYERS = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning every failure into a CheckpointError naming the file."""
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


@dataclass(frozen=True)
class OFAArchitecture:
    """The network's shape: the ``config.json`` fields our inference path reads.

    Field names are ``OFAConfig``'s, so the file round-trips unchanged; defaults
    are ``OFAConfig.__init__``'s.
    """

    vocab_size: int = 59457
    max_position_embeddings: int = 1024
    d_model: int = 512
    encoder_layers: int = 4
    encoder_ffn_dim: int = 2048
    encoder_attention_heads: int = 8
    decoder_layers: int = 4
    decoder_ffn_dim: int = 2048
    decoder_attention_heads: int = 8
    activation_function: str = "gelu"
    scale_embedding: bool = False
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    encoder_normalize_before: bool = True
    decoder_normalize_before: bool = True
    normformer: bool = True
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    resnet_type: str = "resnet101"
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    add_type_embedding: bool = True
    share_decoder_input_output_embed: bool = True
    attn_scale_factor: float = 2.0
    code_layernorm_embedding: bool = True
    code_image_size: int = 128
    share_attn_bias: bool = False
    use_image_feature: bool = True
    exclude_mlp: bool = True
    mlp_dim: int = 512
    temperature_init_value: float | None = None
    # Variants ModelScope supports for other OFA models but this engine does not
    # implement; a config asking for them is refused rather than misread.
    use_ofasys: bool = False
    entangle_position_embedding: bool = False
    use_gamma_feature: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = CONFIG_FILE) -> OFAArchitecture:
        """Keep the fields we know (config.json has many training-only ones), then validate."""
        known = {f.name for f in fields(cls)}
        arch = cls(**{k: v for k, v in raw.items() if k in known})
        arch.validate(source)
        return arch

    @classmethod
    def from_config_json(cls, path: Path) -> OFAArchitecture:
        """Read and validate ``config.json``; errors name the file."""
        return cls.from_dict(read_json(path), str(path))

    @property
    def resnet_layers(self) -> tuple[int, int, int]:
        """Bottleneck blocks per stage, as ModelScope's ``ofa/resnet.py`` builds them."""
        return _RESNET_LAYERS[self.resnet_type]

    def validate(self, source: str = CONFIG_FILE) -> None:
        unsupported = [
            name
            for name in ("use_ofasys", "entangle_position_embedding", "use_gamma_feature")
            if getattr(self, name)
        ]
        if unsupported:
            raise CheckpointError(
                f"{source}: {', '.join(unsupported)} set to true is not supported by this "
                "engine (OFA-Sys ViT variants); only ResNet-stem OFA checkpoints are"
            )
        if not self.use_image_feature:
            raise CheckpointError(f"{source}: use_image_feature=false is a text-only model")
        if self.resnet_type not in _RESNET_LAYERS:
            raise CheckpointError(
                f"{source}: resnet_type {self.resnet_type!r} is not one of {sorted(_RESNET_LAYERS)}"
            )
        if self.activation_function not in _SUPPORTED_ACTIVATIONS:
            raise CheckpointError(
                f"{source}: activation_function {self.activation_function!r} is not one of "
                f"{list(_SUPPORTED_ACTIVATIONS)}"
            )
        for heads, name in (
            (self.encoder_attention_heads, "encoder_attention_heads"),
            (self.decoder_attention_heads, "decoder_attention_heads"),
        ):
            if heads <= 0 or self.d_model % heads:
                raise CheckpointError(
                    f"{source}: d_model {self.d_model} is not divisible by {name}"
                )


@dataclass(frozen=True)
class TaskSettings:
    """What ``configuration.json`` says about preprocessing and scoring."""

    prompt_type: str = "none"
    prompt: str | None = None
    patch_image_size: int = 480
    max_src_length: int = 256
    imagenet_default_mean_and_std: bool = False
    answer2label: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_ANSWER2LABEL))
    demo: bool = False
    """True for the random-weight checkpoints our demo writer makes (``model.demo``)."""

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel pixel mean the reference normalizes with."""
        return (0.485, 0.456, 0.406) if self.imagenet_default_mean_and_std else (0.5, 0.5, 0.5)

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel pixel std the reference normalizes with."""
        return (0.229, 0.224, 0.225) if self.imagenet_default_mean_and_std else (0.5, 0.5, 0.5)

    @property
    def answers(self) -> list[str]:
        """Candidate answers in the answer file's order (the reference's traversal order)."""
        return list(self.answer2label)

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> TaskSettings:
        """Read ``configuration.json`` (and its answer file), refusing what we cannot serve."""
        path = model_dir / CONFIGURATION_FILE
        raw = read_json(path)
        model = raw.get("model") or {}
        if not isinstance(model, dict):
            raise CheckpointError(f"{path}: 'model' must be an object")
        model_type = str(model.get("type", "ofa"))
        if model_type != "ofa":
            raise CheckpointError(f"{path}: model.type is {model_type!r}, expected 'ofa'")
        multimodal_type = model.get("multimodal_type", "default")
        if multimodal_type != "default":
            raise CheckpointError(
                f"{path}: model.multimodal_type {multimodal_type!r} is not supported"
            )
        language = str(model.get("language", "en"))
        if language != "en":
            raise CheckpointError(
                f"{path}: model.language {language!r}: only English OFA is supported"
            )
        # Both values get traverse's full distribution here: ModelScope's `generation` is a
        # beam search within the same answer trie whose one answer (score 1.0) is its argmax.
        gen_type = str(model.get("gen_type", "generation"))
        if gen_type not in ("generation", "traverse"):
            raise CheckpointError(f"{path}: model.gen_type must be 'generation' or 'traverse'")
        prompt_type = str(model.get("prompt_type", "none"))
        if prompt_type not in ("none", "prev_output"):
            raise CheckpointError(f"{path}: model.prompt_type must be 'none' or 'prev_output'")

        answer_file = model.get("answer2label")
        answer2label = dict(DEFAULT_ANSWER2LABEL)
        if answer_file:
            answer2label = read_json(model_dir / str(answer_file))
            if not answer2label or not all(isinstance(k, str) and k for k in answer2label):
                raise CheckpointError(f"{model_dir / str(answer_file)}: needs non-empty answers")

        prompt = model.get("prompt")
        try:
            settings = cls(
                prompt_type=prompt_type,
                prompt=str(prompt) if prompt else None,
                patch_image_size=int(model.get("patch_image_size", 480)),
                max_src_length=int(model.get("max_src_length", 256)),
                imagenet_default_mean_and_std=bool(
                    model.get("imagenet_default_mean_and_std", False)
                ),
                answer2label=answer2label,
                demo=bool(model.get("demo", False)),
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from None
        if settings.patch_image_size < 16 or settings.max_src_length < 1:
            raise CheckpointError(f"{path}: patch_image_size/max_src_length out of range")
        return settings
