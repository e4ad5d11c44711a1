"""tokenizer.py: BART's byte-level BPE plus OFA's added tokens, with clear file errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ofa_ve_engine import CheckpointError
from ofa_ve_engine.tokenizer import NUM_BIN_TOKENS, NUM_CODE_TOKENS, OFATokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> OFATokenizer:
    return OFATokenizer(tiny_model_dir)


def test_ids_of_special_and_added_tokens(tokenizer: OFATokenizer) -> None:
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id) == (0, 1, 2)
    assert len(tokenizer) == 50265 + NUM_CODE_TOKENS + NUM_BIN_TOKENS
    assert tokenizer.encode("<code_0>") == [50265]
    assert tokenizer.encode("<bin_999>") == [len(tokenizer) - 1]
    assert tokenizer.encode(" a <mask>") == [*tokenizer.encode(" a"), 50264]  # space swallowed


def test_encode_decode_round_trip_and_truncation(tokenizer: OFATokenizer) -> None:
    text = ' does the image describe " two dogs, 3/4 café "?'
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(text, max_length=3) == ids[:3]
    assert len(tokenizer.encode(" yes")) == len(tokenizer.encode(" maybe")) == 1


def test_missing_files_are_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_model_dir / "vocab.json", tmp_path)
    with pytest.raises(CheckpointError, match=r"merges\.txt is missing"):
        OFATokenizer(tmp_path)


def test_vocabulary_without_barts_special_tokens_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    vocab = json.loads((tiny_model_dir / "vocab.json").read_text(encoding="utf-8"))
    del vocab["<mask>"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    shutil.copy(tiny_model_dir / "merges.txt", tmp_path)
    with pytest.raises(CheckpointError, match="<mask>"):
        OFATokenizer(tmp_path)


def test_unreadable_vocabulary_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text("{broken")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(CheckpointError, match="cannot read BPE vocabulary"):
        OFATokenizer(tmp_path)
