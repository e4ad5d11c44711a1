"""demo_checkpoint.py on the tiny architecture: BPE, random weights, decisive answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.demo_checkpoint import build_bpe, make_decisive, random_state_dict
from ofa_ve_engine.tokenizer import OFATokenizer
from support.engine_tiny import png

SHARED = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.output_projection.weight",
)


def test_bpe_keeps_prompt_and_answer_words_whole() -> None:
    vocab, merges = build_bpe()
    assert len(vocab) == 50265 and vocab["<mask>"] == 50264
    assert {"Ġyes", "Ġno", "Ġmaybe", "Ġdescribe", "Ġimply"} <= set(vocab)
    assert merges == build_bpe()[1]  # deterministic


def test_random_weights_are_seeded(tiny_model_dir: Path) -> None:
    a = random_state_dict(tiny_model_dir / "config.json", seed=1)
    b = random_state_dict(tiny_model_dir / "config.json", seed=1)
    c = random_state_dict(tiny_model_dir / "config.json", seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.layers.0.fc1.weight"], c["encoder.layers.0.fc1.weight"])


def _margins(engine: VisualEntailmentEngine) -> tuple[float, set[int]]:
    items = [
        engine.prepare(png((40 * i, 200 - 30 * i, 60 + 25 * i), (40, 30)), hypothesis)
        for i in range(6)
        for hypothesis in ("A dog runs on the grass.", "Two people sit at a table.")
    ]
    probs = np.sort(engine.predict(items), axis=1)
    return float(np.median(probs[:, -1] - probs[:, -2])), set(engine.predict(items).argmax(1))


def test_decisive_rewrites_only_the_answer_rows(
    tiny_model_dir: Path, tiny_engine: VisualEntailmentEngine
) -> None:
    state = torch.load(tiny_model_dir / "pytorch_model.bin", weights_only=True)
    decisive = make_decisive(tiny_model_dir, state, seed=3)
    assert torch.equal(make_decisive(tiny_model_dir, state, seed=3)[SHARED[0]], decisive[SHARED[0]])
    assert all(decisive[k] is decisive[SHARED[0]] for k in SHARED)  # still one tensor
    assert all(torch.equal(decisive[k], v) for k, v in state.items() if k not in SHARED)
    tokenizer = OFATokenizer(tiny_model_dir)
    answer_ids = sorted(tokenizer.encode(" " + a)[0] for a in ("yes", "no", "maybe"))
    changed = (decisive[SHARED[0]] != state[SHARED[0]]).any(1).nonzero().flatten().tolist()
    assert changed == answer_ids

    model = type(tiny_engine.model)(tiny_engine.model.arch)
    model.load_state_dict(decisive)
    confident = VisualEntailmentEngine(tiny_engine.settings, tokenizer, model.eval())
    random_margin, _ = _margins(tiny_engine)
    margin, labels = _margins(confident)
    assert margin > 0.3 > random_margin
    assert len(labels) >= 2  # varied (all three are checked on OFA-tiny and real photos)
