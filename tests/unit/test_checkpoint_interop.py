"""Our network and ModelScope's `OFAModel` read each other's checkpoints strictly.

Why: the real weights on the hub were written by ModelScope's class, and our
demo weights are read by ModelScope's pipeline in the parity tests. Both
directions must load with no missing, unexpected or reshaped key, and every
tensor must arrive unchanged. ModelScope runs in a process of its own, the session's
`modelscope_reference` worker (see `reference.modelscope_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ofa_ve_data.workload import TEST_IMAGES
from ofa_ve_engine import ANSWER_TO_LABEL, LABELS, VisualEntailmentEngine
from ofa_ve_engine.checkpoint import load_model
from ofa_ve_engine.demo_checkpoint import write_demo_checkpoint
from ofa_ve_engine.modeling import OFAModel
from ofa_ve_engine.settings import OFAArchitecture
from ofa_ve_reference.worker import ReferenceWorker

pytestmark = [pytest.mark.reference, pytest.mark.slow]

OFA_TINY_PARAMETERS = 33_488_336
OFA_TINY_STATE_KEYS = 541


@pytest.fixture(scope="module")
def modelscope_written_dir(
    tmp_path_factory: pytest.TempPathFactory, modelscope_reference: ReferenceWorker
) -> Path:
    """A model directory whose weights ModelScope's own OFAModel produced."""
    out = tmp_path_factory.mktemp("interop") / "modelscope-weights"
    assert modelscope_reference.write_checkpoint(out, seed=11) == out
    return out


@pytest.fixture(scope="module")
def our_demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_checkpoint(tmp_path_factory.mktemp("interop") / "our-weights", seed=5)


def test_modelscope_checkpoint_loads_strictly_into_ours(modelscope_written_dir: Path) -> None:
    theirs = torch.load(
        modelscope_written_dir / "pytorch_model.bin", map_location="cpu", weights_only=True
    )
    fresh = OFAModel(OFAArchitecture.from_config_json(modelscope_written_dir / "config.json"))
    assert set(theirs) == set(fresh.state_dict()), "state-dict key sets differ"
    for key, value in fresh.state_dict().items():
        assert theirs[key].shape == value.shape and theirs[key].dtype == value.dtype, key

    model = load_model(modelscope_written_dir)  # strict: raises on any key mismatch
    ours = model.state_dict()
    differing = [key for key, value in theirs.items() if not torch.equal(ours[key], value)]
    assert not differing, f"tensors changed on load: {differing[:10]}"
    assert sum(p.numel() for p in model.parameters()) == OFA_TINY_PARAMETERS


def test_our_checkpoint_loads_strictly_into_modelscope(
    our_demo_dir: Path, modelscope_reference: ReferenceWorker
) -> None:
    report = modelscope_reference.loading_report(our_demo_dir)
    assert report["strict_error"] is None, report["strict_error"]
    assert report["from_pretrained_missing_keys"] == []
    assert report["from_pretrained_unexpected_keys"] == []
    assert report["from_pretrained_mismatched_keys"] == []
    assert report["values_differ_after_from_pretrained"] == []
    assert report["checkpoint_keys"] == report["model_state_keys"] == OFA_TINY_STATE_KEYS
    assert report["num_parameters"] == OFA_TINY_PARAMETERS


def test_every_demo_tensor_is_random(our_demo_dir: Path) -> None:
    """No constant float tensor (zero bias, unit norm, identity BatchNorm) survives,
    so the parity tests exercise every parameter."""
    state = torch.load(our_demo_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    constant = [
        key
        for key, value in state.items()
        if value.is_floating_point()
        and value.numel() > 1
        and bool((value == value.flatten()[0]).all())
    ]
    assert not constant, f"constant tensors: {constant[:10]}"


def test_engine_matches_pipeline_on_modelscope_weights(
    modelscope_written_dir: Path, modelscope_reference: ReferenceWorker
) -> None:
    """Weights initialised by ModelScope's class (not ours) give the same answers too."""
    cases = [
        ("landscape_640x480_jpeg", "A woman in an orange suit is smiling.", None),
        ("rgba_200x164_png", "There are two BIRDS.", "A CAT looks straight at the camera."),
        ("exif_orientation6_400x300_jpeg", "The cup/saucer is on a wooden table", None),
    ]
    pairs = [(TEST_IMAGES[image].read_bytes(), hyp, premise) for image, hyp, premise in cases]
    reference = modelscope_reference.pipeline(modelscope_written_dir, pairs)
    engine = VisualEntailmentEngine.from_model_dir(modelscope_written_dir, device="cpu")
    probs = engine.predict([engine.prepare(*pair) for pair in pairs])
    for row, ref in zip(probs, reference, strict=True):
        label = ANSWER_TO_LABEL[ref["labels"]]
        assert LABELS[int(np.argmax(row))] == label, (row, ref)
        assert abs(float(row[LABELS.index(label)]) - ref["scores"]) <= 1e-5, (row, ref)
