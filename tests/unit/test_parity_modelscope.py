"""Acceptance: our engine answers exactly as ModelScope's own visual-entailment pipeline.

Both read the same random-weight checkpoint in ModelScope's layout. ModelScope
runs unmodified (`pipeline(Tasks.visual_entailment, model=DIR)`, one call per
item, in a process of its own); our engine runs as the server runs it (encoded bytes in,
one padded batch). Per item we require the same tokens, the same resized
pixels, the same label, and our probability of ModelScope's label within 1e-5
of its score. The checkpoint's every tensor is random (no zero biases or unit
norms), so a parameter our network ignored or misapplied would show here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ofa_ve_data.workload import EXIF_IMAGE, HYPOTHESES, LONG_HYPOTHESIS, PREMISES, TEST_IMAGES
from ofa_ve_engine import ANSWER_TO_LABEL, LABELS, PreparedItem, VisualEntailmentEngine
from ofa_ve_reference.worker import ReferenceWorker
from support.hostile import payloads

pytestmark = [pytest.mark.reference, pytest.mark.slow]

SCORE_TOLERANCE = 1e-5

# (image, hypothesis, premise or None): every test image once, every hypothesis
# at least once, every premise once, and a hypothesis past OFA's 256-token limit.
CASES: list[tuple[str, str, str | None]] = [
    ("landscape_640x480_jpeg", "A woman in an orange suit is smiling.", None),
    ("portrait_300x500_progressive_jpeg", "   a cat    with green   eyes  ", None),
    ("wide_1024x256_jpeg", "A rocket on its launch-pad at night/day, under a blue sky.", None),
    ("square_480x480_jpeg_444", "A well-known astronaut poses in front of a flag.", None),
    (EXIF_IMAGE, "The cup/saucer is on a wooden table", None),
    (EXIF_IMAGE, "There are two BIRDS.", "Coffee is served in a red cup/saucer."),
    ("cmyk_240x160_jpeg", "A cat's face looks at the camera.", None),
    ("tiny_50x40_png", "#1: the coffee is hot; very hot~", None),
    ("gray_256x256_png", "...the man is holding a camera!", None),
    ("gray_256x256_png", "<person> is sitting on a bench.", "<person> holds a camera on a tripod."),
    ("rgba_200x164_png", "Is this a dog?", None),
    ("palette_192x152_png", "Coins lie on a dark table.", None),
    ("webp_320x214", "NO ONE IS HERE", "!!A rocket stands on the launch-pad, ready."),
    ("bmp_120x80", "tab\tseparated words and a trailing newline\n", None),
    ("gif_2frames_96x64", "A café serves crème brûlée.", None),
    ("landscape_640x480_jpeg", "Two people, a boy and a girl, are playing soccer.",
     "A woman wearing an orange space suit."),
    ("portrait_300x500_progressive_jpeg", "There are two BIRDS.",
     "A CAT looks straight at the camera."),
    ("wide_1024x256_jpeg", LONG_HYPOTHESIS, None),
]  # fmt: skip


def test_cases_cover_the_suite_inputs() -> None:
    """Guards the case list itself: every image, hypothesis and premise takes part."""
    assert {image for image, _, _ in CASES} == set(TEST_IMAGES)
    assert set(HYPOTHESES) <= {hyp for _, hyp, _ in CASES}
    assert set(PREMISES) <= {premise for _, _, premise in CASES}


@pytest.fixture(scope="module")
def model_dir(demo_model_dir: Path) -> Path:
    """The session's demo checkpoint: its seed's answers on these cases are not all
    the same label."""
    return demo_model_dir


@pytest.fixture(scope="module")
def reference(
    model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    modelscope_reference: ReferenceWorker,
) -> tuple[list[dict], Path]:
    """ModelScope's outputs per case, and the folder of its preprocessed inputs."""
    inputs_dir = tmp_path_factory.mktemp("modelscope-inputs")
    pairs = [(TEST_IMAGES[image].read_bytes(), hyp, premise) for image, hyp, premise in CASES]
    results = modelscope_reference.pipeline(model_dir, pairs, inputs_dir=inputs_dir)
    assert len(results) == len(CASES)
    return results, inputs_dir


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> VisualEntailmentEngine:
    return VisualEntailmentEngine.from_model_dir(model_dir, device="cpu")


@pytest.fixture(scope="module")
def items(engine: VisualEntailmentEngine) -> list[PreparedItem]:
    return [
        engine.prepare(TEST_IMAGES[image].read_bytes(), hyp, premise)
        for image, hyp, premise in CASES
    ]


def _case_id(index: int) -> str:
    image, hyp, premise = CASES[index]
    return f"case {index} ({image}, {hyp[:40]!r}{', premise' if premise else ''})"


def test_tokens_match_modelscope(
    reference: tuple[list[dict], Path], items: list[PreparedItem]
) -> None:
    _, inputs_dir = reference
    for index, item in enumerate(items):
        ref = np.load(inputs_dir / f"{index}.npz")
        assert list(item.input_ids) == ref["input_ids"].tolist(), _case_id(index)
        assert list(item.decoder_prompt) == ref["decoder_prompt"].tolist(), _case_id(index)


def test_pixels_match_modelscope(
    reference: tuple[list[dict], Path], items: list[PreparedItem], engine: VisualEntailmentEngine
) -> None:
    """Our uint8 pixels, normalized as the engine does, equal ModelScope's patch tensor."""
    _, inputs_dir = reference
    mean = np.asarray(engine.settings.mean, dtype=np.float32)
    std = np.asarray(engine.settings.std, dtype=np.float32)
    for index, item in enumerate(items):
        ref = np.load(inputs_dir / f"{index}.npz")["patch_image"]  # [3, P, P] normalized
        ours = ((item.pixels.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
        assert ours.shape == ref.shape, _case_id(index)
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0, err_msg=_case_id(index))


def test_exif_orientation_is_applied() -> None:
    """The EXIF case is meaningful: its transposed pixels differ from the stored ones."""
    from PIL import Image, ImageOps

    with Image.open(TEST_IMAGES[EXIF_IMAGE]) as stored:
        assert stored.getexif().get(0x0112) == 6
        upright = ImageOps.exif_transpose(stored)
        assert upright.size == (stored.height, stored.width)
        squashed = [im.convert("RGB").resize((480, 480)) for im in (stored, upright)]
        diff = np.abs(np.asarray(squashed[0], np.int16) - np.asarray(squashed[1], np.int16))
        assert diff.mean() > 10


def _assert_matches(probs: np.ndarray, results: list[dict]) -> None:
    assert probs.shape == (len(CASES), len(LABELS)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for index, (row, ref) in enumerate(zip(probs, results, strict=True)):
        label = ANSWER_TO_LABEL[ref["labels"]]
        assert LABELS[int(row.argmax())] == label, f"{_case_id(index)}: {row} vs {ref}"
        column = LABELS.index(label)
        assert abs(float(row[column]) - ref["scores"]) <= SCORE_TOLERANCE, (
            f"{_case_id(index)}: our p({label})={row[column]:.7f}, ModelScope {ref['scores']:.7f}"
        )


def test_batched_predictions_match_modelscope(
    reference: tuple[list[dict], Path], engine: VisualEntailmentEngine, items: list[PreparedItem]
) -> None:
    """All cases in one padded batch (how the server runs) vs ModelScope one by one."""
    results, _ = reference
    _assert_matches(engine.predict(items), results)
    labels = {ref["labels"] for ref in results}
    assert len(labels) >= 2, f"degenerate seed: ModelScope answered only {labels}"


def test_single_item_predictions_match_modelscope(
    reference: tuple[list[dict], Path], engine: VisualEntailmentEngine, items: list[PreparedItem]
) -> None:
    """Every third case alone (batch of one, no padding) agrees as well."""
    results, _ = reference
    chosen = range(0, len(CASES), 3)
    for index in chosen:
        row = engine.predict([items[index]])[0]
        ref = results[index]
        label = ANSWER_TO_LABEL[ref["labels"]]
        assert LABELS[int(row.argmax())] == label, f"{_case_id(index)}: {row} vs {ref}"
        assert abs(float(row[LABELS.index(label)]) - ref["scores"]) <= SCORE_TOLERANCE


def test_damaged_files_the_reference_reads_whole_are_answered_as_it_answers(
    model_dir: Path,
    tmp_path: Path,
    modelscope_reference: ReferenceWorker,
    engine: VisualEntailmentEngine,
) -> None:
    """ModelScope's pipeline (its import sets Pillow's LOAD_TRUNCATED_IMAGES) reads a
    JPEG that lacks only its end marker, and a PNG whose only damage is an ancillary
    chunk's checksum, as the intact photo; we answer them as it does (ofa_ve_engine/
    repair.py), same pixels and same probabilities."""
    jpeg = TEST_IMAGES["landscape_640x480_jpeg"].read_bytes()
    progressive = TEST_IMAGES["portrait_300x500_progressive_jpeg"].read_bytes()
    png = payloads.with_chunk(TEST_IMAGES["rgba_200x164_png"].read_bytes(), b"tEXt", b"a\x00b")
    damaged = [
        payloads.without_end_marker(jpeg),
        payloads.without_end_marker(progressive),
        payloads.with_bad_checksum(png, b"tEXt"),
    ]
    pairs = [(data, "A cat is sitting on a wall.", None) for data in damaged]
    results = modelscope_reference.pipeline(model_dir, pairs, inputs_dir=tmp_path)
    items = [engine.prepare(data, hyp, premise) for data, hyp, premise in pairs]
    mean = np.asarray(engine.settings.mean, dtype=np.float32)
    std = np.asarray(engine.settings.std, dtype=np.float32)
    for index, item in enumerate(items):
        ref = np.load(tmp_path / f"{index}.npz")["patch_image"]
        ours = ((item.pixels.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0, err_msg=f"damaged file {index}")
    rows = engine.predict(items)
    for index, (row, ref) in enumerate(zip(rows, results, strict=True)):
        label = ANSWER_TO_LABEL[ref["labels"]]
        assert LABELS[int(row.argmax())] == label, f"damaged file {index}: {row} vs {ref}"
        assert abs(float(row[LABELS.index(label)]) - ref["scores"]) <= SCORE_TOLERANCE
