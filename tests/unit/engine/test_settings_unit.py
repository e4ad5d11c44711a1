"""settings.py: configuration.json and config.json as typed settings; refusals name the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ofa_ve_engine import CheckpointError, OFAArchitecture, TaskSettings
from ofa_ve_engine.settings import DEFAULT_ANSWER2LABEL


def _model_dir(tmp_path: Path, model: dict[str, object], answers: object = None) -> Path:
    (tmp_path / "configuration.json").write_text(json.dumps({"model": model}))
    if answers is not None:
        (tmp_path / "answers.json").write_text(json.dumps(answers))
    return tmp_path


def test_defaults_are_modelscopes(tmp_path: Path) -> None:
    settings = TaskSettings.from_model_dir(_model_dir(tmp_path, {"type": "ofa"}))
    assert settings.patch_image_size == 480 and settings.max_src_length == 256
    assert settings.prompt_type == "none" and settings.prompt is None and not settings.demo
    assert settings.answers == list(DEFAULT_ANSWER2LABEL)
    assert settings.mean == settings.std == (0.5, 0.5, 0.5)


def test_values_are_read(tmp_path: Path) -> None:
    model = {
        "type": "ofa",
        "prompt_type": "prev_output",
        "prompt": " is it {}?",
        "patch_image_size": 256,
        "max_src_length": 80,
        "imagenet_default_mean_and_std": True,
        "answer2label": "answers.json",
        "demo": True,
    }
    answers = {"maybe": 0, "yes": 1, "no": 2}
    settings = TaskSettings.from_model_dir(_model_dir(tmp_path, model, answers))
    assert (settings.prompt_type, settings.prompt) == ("prev_output", " is it {}?")
    assert (settings.patch_image_size, settings.max_src_length) == (256, 80)
    assert settings.mean == (0.485, 0.456, 0.406) and settings.std == (0.229, 0.224, 0.225)
    assert settings.answers == ["maybe", "yes", "no"] and settings.demo


@pytest.mark.parametrize("gen_type", ["generation", "traverse"])
def test_both_gen_types_are_accepted(tmp_path: Path, gen_type: str) -> None:
    """Both are served with traverse's distribution (settings.py says why that is right)."""
    TaskSettings.from_model_dir(_model_dir(tmp_path, {"type": "ofa", "gen_type": gen_type}))


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ({"type": "bert"}, "expected 'ofa'"),
        ({"gen_type": "beam"}, "gen_type"),
        ({"prompt_type": "src"}, "prompt_type"),
        ({"language": "zh"}, "only English"),
        ({"multimodal_type": "text2sql"}, "multimodal_type"),
        ({"patch_image_size": 8}, "patch_image_size"),
        ({"patch_image_size": "big"}, "configuration.json"),
        ({"answer2label": "missing.json"}, "missing.json is missing"),
    ],
)
def test_unsupported_configurations_are_refused(
    tmp_path: Path, model: dict[str, object], fragment: str
) -> None:
    with pytest.raises(CheckpointError, match=fragment):
        TaskSettings.from_model_dir(_model_dir(tmp_path, model))


def test_empty_answer_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="non-empty answers"):
        TaskSettings.from_model_dir(_model_dir(tmp_path, {"answer2label": "answers.json"}, {}))


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "configuration.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"configuration\.json must hold a JSON object"):
        TaskSettings.from_model_dir(tmp_path)


def test_architecture_keeps_known_fields_only() -> None:
    arch = OFAArchitecture.from_dict({"d_model": 64, "dropout": 0.1, "resnet_type": "resnet50"})
    assert arch.d_model == 64 and not hasattr(arch, "dropout")
    assert arch.resnet_layers == (3, 4, 6)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"use_ofasys": True}, "use_ofasys"),
        ({"use_image_feature": False}, "text-only"),
        ({"resnet_type": "vit"}, "resnet_type"),
        ({"activation_function": "tanh"}, "activation_function"),
        ({"d_model": 30, "encoder_attention_heads": 4}, "encoder_attention_heads"),
    ],
)
def test_unsupported_architectures_are_refused(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(CheckpointError, match=fragment):
        OFAArchitecture.from_dict(raw)
