"""The engine on the session's demo checkpoint: batching, scoring paths, inputs, loading.

One engine (conftest's ``demo_engine``) serves every test; variants with other
options are assembled from its parts (the constructor does no I/O), so the 33M
checkpoint is loaded again only where loading itself is under test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ofa_ve_engine import CheckpointError, InputLimits, InvalidInputError, VisualEntailmentEngine
from ofa_ve_engine.checkpoint import load_model
from ofa_ve_engine.scoring import ScoringInput
from ofa_ve_engine.tokenizer import OFATokenizer
from support.synthetic_images import png

MIXED_TEXTS = [
    ("Two birds sit on a wire.", None),
    ("A well-known DOG runs / jumps!", None),
    ("Nobody is here", "A photo of an empty street at night, with rain and neon lights."),
    ("a <person> rides a horse", "someone outdoors"),
    ("...It is sunny", None),
    ("The cat is black.", "The animal in the picture is a small cat sleeping on a sofa."),
]


@pytest.fixture(scope="module")
def engine(demo_engine: VisualEntailmentEngine) -> VisualEntailmentEngine:
    return demo_engine


def _variant(engine: VisualEntailmentEngine, **options: object) -> VisualEntailmentEngine:
    """Another engine over the same tokenizer, settings and network."""
    return VisualEntailmentEngine(engine.settings, engine.tokenizer, engine.model, **options)


@pytest.fixture(scope="module")
def items(engine: VisualEntailmentEngine) -> list:
    images = [png((20 * i, 90, 160), (64 + 13 * i, 48 + 29 * i)) for i in range(len(MIXED_TEXTS))]
    return [engine.prepare(img, h, p) for img, (h, p) in zip(images, MIXED_TEXTS, strict=True)]


@pytest.fixture(scope="module")
def one_pass(engine: VisualEntailmentEngine, items: list) -> np.ndarray:
    """The demo engine's answers to ``items`` in one forward pass (computed once: every
    variant below is compared with them)."""
    assert engine.forward_batch_size is None or engine.forward_batch_size >= len(items)
    return engine.predict(items)


def test_outputs_are_probability_distributions(one_pass: np.ndarray, items: list) -> None:
    probs = one_pass
    assert probs.shape == (len(items), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs >= 0).all()


@pytest.mark.slow
def test_batched_equals_one_by_one(
    engine: VisualEntailmentEngine, items: list, one_pass: np.ndarray
) -> None:
    lengths = {len(it.input_ids) for it in items}
    assert len(lengths) > 2, "the batch must mix text lengths to exercise padding"
    batched = one_pass
    alone = np.concatenate([engine.predict([it]) for it in items])
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)
    assert (batched.argmax(1) == alone.argmax(1)).all()


@pytest.mark.slow
def test_forward_passes_equal_one_pass(
    engine: VisualEntailmentEngine, items: list, one_pass: np.ndarray
) -> None:
    small = _variant(engine, forward_batch_size=4)
    passes: list[tuple[int, float]] = []
    got = small.predict(items, on_pass=lambda done, seconds: passes.append((len(done), seconds)))
    assert [n for n, _ in passes] == [4, len(items) - 4]
    assert all(seconds >= 0 for _, seconds in passes)
    np.testing.assert_allclose(got, one_pass, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_teacher_forced_scoring_equals_one_pass(
    engine: VisualEntailmentEngine, items: list
) -> None:
    """The general (reference) traverse scoring and the one-pass shortcut agree."""
    assert engine.scorer.single_token
    batch = engine.collate(items)
    with torch.inference_mode():
        encoded = engine.model.encoder(batch.input_ids, batch.images)
        inputs = ScoringInput(encoded, batch.decoder_prompts, batch.prompt_lengths)
        general = engine.scorer.score_teacher_forced(engine.model, inputs)
        one_pass = engine.scorer.score_one_pass(engine.model, inputs)
    torch.testing.assert_close(general, one_pass, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_unfolded_batchnorm_agrees(
    engine: VisualEntailmentEngine, demo_model_dir: Path, items: list, one_pass: np.ndarray
) -> None:
    """Eager BatchNorm, NCHW pixels, aten linear layers: the loader's speedups off."""
    model = load_model(demo_model_dir).requires_grad_(False)
    plain = VisualEntailmentEngine(engine.settings, engine.tokenizer, model, channels_last=False)
    assert plain.linear_backend == "aten"
    np.testing.assert_allclose(plain.predict(items), one_pass, atol=1e-5, rtol=0)


def test_empty_or_blank_premise_means_image_alone(engine: VisualEntailmentEngine) -> None:
    image = png((1, 2, 3), (40, 30))
    alone = engine.prepare(image, "A red square.")
    for premise in ("", "   ", b""):
        assert engine.prepare(image, "A red square.", premise).input_ids == alone.input_ids


def test_prompt_tokens_and_decoder_prompt(engine: VisualEntailmentEngine) -> None:
    item = engine.prepare(png((1, 2, 3), (40, 30)), "There are two BIRDS.")
    tok = engine.tokenizer
    assert item.input_ids[0] == tok.bos_id and item.input_ids[-1] == tok.eos_id
    assert (
        tok.decode(list(item.input_ids))
        == '<s> does the image describe " there are two birds. "?</s>'
    )
    assert item.decoder_prompt == item.input_ids[:-1]  # prompt_type prev_output


@pytest.mark.parametrize(
    ("hypothesis", "premise", "name", "fragment"),
    [
        ("", None, "HYPOTHESIS", "is empty"),
        ("  \t ", None, "HYPOTHESIS", "is empty"),
        (b"\xff\xfe broken", None, "HYPOTHESIS", "not valid UTF-8"),
        ("nul \x00 inside", None, "HYPOTHESIS", "NUL"),
        ("word " * 2000, None, "HYPOTHESIS", "over the limit of 8192 bytes"),
        ("fine", b"\xc3\x28", "PREMISE", "not valid UTF-8"),
    ],
)
def test_bad_text_is_refused_naming_the_input(
    engine: VisualEntailmentEngine, hypothesis: object, premise: object, name: str, fragment: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        engine.prepare(png((1, 2, 3), (40, 30)), hypothesis, premise)  # type: ignore[arg-type]
    assert info.value.input_name == name and fragment in str(info.value)


def test_limits_are_configurable(engine: VisualEntailmentEngine) -> None:
    strict = _variant(engine, limits=InputLimits(max_image_pixels=100, max_text_bytes=10))
    with pytest.raises(InvalidInputError, match="IMAGE: is 40x30 = 1200 pixels"):
        strict.prepare(png((1, 2, 3), (40, 30)), "short")
    with pytest.raises(InvalidInputError, match="HYPOTHESIS: is 11 bytes"):
        strict.prepare(png((1, 2, 3), (5, 5)), "eleven char")


STRINGS = [
    ' does the image describe " there are two birds. "?',
    ' can image and text1 " a man/woman " imply text2 " 3 dogs, 2 cats; 1 bird "?',
    " unicode: café naïve 東京 🙂 — em dash",
    " special tokens typed in: <s> </s> <pad> <unk> a <mask> b",
    " added tokens: <code_5> <bin_999> <code_8191>x",
    "   leading spaces and\ttabs\nnewlines  ",
    " don't won't it's we're",
]


def test_tokenizer_equals_the_reference_bart_tokenizer(demo_model_dir: Path) -> None:
    """ModelScope's OFATokenizer is transformers' BartTokenizer plus OFA's added tokens."""
    transformers = pytest.importorskip("transformers")
    reference = transformers.BartTokenizer(
        str(demo_model_dir / "vocab.json"), str(demo_model_dir / "merges.txt")
    )
    reference.add_tokens([f"<code_{i}>" for i in range(8192)])
    reference.add_tokens([f"<bin_{i}>" for i in range(1000)])
    ours = OFATokenizer(demo_model_dir)
    assert len(ours) == len(reference)
    for text in STRINGS:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text) == expected, text
    assert (
        ours.encode(STRINGS[1], max_length=5)
        == reference(STRINGS[1], add_special_tokens=False, max_length=5, truncation=True)[
            "input_ids"
        ]
    )


def _copy_model_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).symlink_to(f) if f.name == "pytorch_model.bin" else shutil.copy(f, dst)
    return dst


def test_truncated_weights_give_a_clear_error(demo_model_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_model_dir(demo_model_dir, tmp_path / "m")
    weights = model_dir / "pytorch_model.bin"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        VisualEntailmentEngine.from_model_dir(model_dir, device="cpu")


def test_missing_and_unexpected_keys_are_named(demo_model_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_model_dir(demo_model_dir, tmp_path / "m")
    state = torch.load(demo_model_dir / "pytorch_model.bin", weights_only=True)
    del state["encoder.layers.2.fc1.weight"]
    state["encoder.extra.weight"] = torch.zeros(1)
    (model_dir / "pytorch_model.bin").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as info:
        VisualEntailmentEngine.from_model_dir(model_dir, device="cpu")
    assert "encoder.layers.2.fc1.weight" in str(info.value)
    assert "encoder.extra.weight" in str(info.value)


class _NotAWeight:
    pass


def test_pickled_objects_are_refused(demo_model_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_model_dir(demo_model_dir, tmp_path / "m")
    (model_dir / "pytorch_model.bin").unlink()
    torch.save({"payload": _NotAWeight()}, model_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        VisualEntailmentEngine.from_model_dir(model_dir, device="cpu")


@pytest.mark.parametrize(
    ("file", "content", "fragment"),
    [
        ("configuration.json", "{not json", "not valid JSON"),
        ("config.json", json.dumps({"use_ofasys": True}), "use_ofasys"),
        ("configuration.json", json.dumps({"model": {"type": "bert"}}), "expected 'ofa'"),
    ],
)
def test_bad_config_files_are_named(
    demo_model_dir: Path, tmp_path: Path, file: str, content: str, fragment: str
) -> None:
    model_dir = _copy_model_dir(demo_model_dir, tmp_path / "m")
    (model_dir / file).write_text(content)
    with pytest.raises(CheckpointError, match=fragment):
        VisualEntailmentEngine.from_model_dir(model_dir, device="cpu")


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        VisualEntailmentEngine.from_model_dir(tmp_path / "nowhere", device="cpu")
