"""The demo checkpoint: ModelScope's layout, OFA-tiny's shape, and byte-for-byte reproducible.

(That ModelScope's own classes read it is proven in test_checkpoint_interop.py
and test_parity_modelscope.py.)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ofa_ve_data.workload import HYPOTHESES, TEST_IMAGES
from ofa_ve_engine import OFAArchitecture, TaskSettings, VisualEntailmentEngine
from ofa_ve_engine.demo_checkpoint import (
    ANSWER_FILE,
    BPE_VOCAB_SIZE,
    DEFAULT_SEED,
    checkpoint_files,
    random_state_dict,
    write_demo_checkpoint,
)
from ofa_ve_engine.tokenizer import OFATokenizer

SCRIPT = ("-m", "ofa_ve_ops.make_demo_checkpoint")


def _digests(model_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoint_files(model_dir)}


@pytest.fixture(scope="module")
def demo(demo_model_dir: Path) -> Path:
    """The session's demo checkpoint: `write_demo_checkpoint` at DEFAULT_SEED (read only)."""
    return demo_model_dir


@pytest.mark.slow
def test_same_seed_same_bytes_and_rewrites_in_place(demo: Path, tmp_path: Path) -> None:
    target = write_demo_checkpoint(tmp_path / "model", seed=DEFAULT_SEED)
    first = _digests(target)
    assert first == _digests(demo)
    write_demo_checkpoint(target, seed=DEFAULT_SEED + 1)  # over an existing folder
    second = _digests(target)
    assert {name for name in second if second[name] != first[name]} == {"pytorch_model.bin"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "staging folder left behind"


def test_weights_leave_the_global_rng_alone(demo: Path) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    random_state_dict(demo / "config.json", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_modelscope_task_configuration(demo: Path) -> None:
    cfg = json.loads((demo / "configuration.json").read_text())
    assert cfg["framework"] == "pytorch" and cfg["task"] == "visual-entailment"
    assert cfg["pipeline"]["type"] == "visual-entailment"
    model = cfg["model"]
    assert model["type"] == "ofa" and model["gen_type"] == "traverse"
    assert model["prompt_type"] == "prev_output" and model["patch_image_size"] == 480
    assert model["demo"] is True, "the engine must be able to tell random weights apart"
    answers = json.loads((demo / model["answer2label"]).read_text())
    assert model["answer2label"] == ANSWER_FILE and answers == {"no": 0, "yes": 1, "maybe": 2}
    settings = TaskSettings.from_model_dir(demo)
    assert settings.answers == ["no", "yes", "maybe"] and settings.demo


def test_ofa_tiny_architecture(demo: Path) -> None:
    arch = OFAArchitecture.from_config_json(demo / "config.json")
    assert (arch.d_model, arch.encoder_layers, arch.decoder_layers) == (256, 4, 4)
    assert (arch.encoder_attention_heads, arch.encoder_ffn_dim) == (4, 1024)
    assert (arch.resnet_type, arch.vocab_size, arch.attn_scale_factor) == ("resnet50", 59457, 2)
    assert (arch.token_bucket_size, arch.image_bucket_size, arch.normformer) == (256, 42, True)
    state = torch.load(demo / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert state["encoder.embed_tokens.weight"].shape == (59457, 256)


def test_bart_layout_vocabulary(demo: Path) -> None:
    vocab = json.loads((demo / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(BPE_VOCAB_SIZE))
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 50264]
    assert (demo / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    tokenizer = OFATokenizer(demo)
    assert len(tokenizer) == 59457, "vocab.json + 8192 <code_i> + 1000 <bin_i>"
    for answer in ("yes", "no", "maybe"):
        assert tokenizer.encode(" " + answer) == [vocab["Ġ" + answer]]
    prompt = ' does the image describe " there are two birds. "?'
    words = [vocab[w] for w in ("Ġdoes", "Ġthe", "Ġimage", "Ġdescribe", "Ġthere", "Ġtwo")]
    assert set(words) <= set(tokenizer.encode(prompt))
    assert tokenizer.decode(tokenizer.encode("Crème brûlée, 3/4 <person>!")) == (
        "Crème brûlée, 3/4 <person>!"
    )


@pytest.mark.slow
def test_cli(demo: Path, tmp_path: Path) -> None:
    help_run = subprocess.run(
        [sys.executable, *SCRIPT, "--help"], capture_output=True, text=True, check=False
    )
    assert help_run.returncode == 0 and "--seed" in help_run.stdout
    out = tmp_path / "cli-model"
    run = subprocess.run(
        [sys.executable, *SCRIPT, "--out", str(out), "--seed", str(DEFAULT_SEED)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out.resolve())
    assert "RANDOM WEIGHTS" in run.stderr
    assert _digests(out) == _digests(demo)


@pytest.fixture(scope="module")
def decisive(decisive_model_dir: Path) -> Path:
    return decisive_model_dir


@pytest.mark.slow
def test_decisive_checkpoint_is_confident_and_varied(decisive: Path) -> None:
    """Like a trained model: large margins on real photos, and every label occurs."""
    model = json.loads((decisive / "configuration.json").read_text())["model"]
    assert model["demo"] is True and model["decisive"] is True
    engine = VisualEntailmentEngine.from_model_dir(decisive, device="cpu")
    assert engine.is_demo
    items = [
        engine.prepare(path.read_bytes(), hypothesis)
        for path in TEST_IMAGES.values()
        for hypothesis in HYPOTHESES[:3]
    ]
    probs = engine.predict(items)
    ranked = np.sort(probs, axis=1)
    margins = ranked[:, -1] - ranked[:, -2]
    assert float(np.median(margins)) > 0.3, margins
    assert set(probs.argmax(axis=1).tolist()) == {0, 1, 2}
