"""OFA's English tokenizer: GPT-2/BART byte-level BPE through the ``tokenizers`` library.

ModelScope's ``OFATokenizer`` is transformers' slow ``BartTokenizer`` over the
model directory's ``vocab.json`` and ``merges.txt``, with 8192 ``<code_i>`` and
1000 ``<bin_i>`` tokens added after the vocabulary. This builds the same thing
on the Rust ``tokenizers`` library (fast, no transformers dependency): same ids
for ordinary text, for BART's special tokens typed into text, and for the
added tokens.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from tokenizers.decoders import ByteLevel as ByteLevelDecoder
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import ByteLevel

from .errors import CheckpointError
from .settings import MERGES_FILE, VOCAB_FILE

NUM_CODE_TOKENS = 8192
NUM_BIN_TOKENS = 1000
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


class OFATokenizer:
    """Encodes prompts to ids exactly as ModelScope's OFA preprocessor does."""

    def __init__(self, model_dir: Path) -> None:
        vocab, merges = model_dir / VOCAB_FILE, model_dir / MERGES_FILE
        for path in (vocab, merges):
            if not path.is_file():
                raise CheckpointError(f"{path} is missing")
        try:
            bpe = BPE.from_file(str(vocab), str(merges))
        except Exception as e:  # tokenizers raises plain Exception on bad files
            raise CheckpointError(f"cannot read BPE vocabulary {vocab} / {merges}: {e}") from None
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
        tok.decoder = ByteLevelDecoder()
        missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
        if missing:
            raise CheckpointError(f"{vocab} lacks BART's special tokens {missing}")
        # BART's <mask> swallows the space before it; the others match literally.
        tok.add_special_tokens(
            [AddedToken(t, lstrip=(t == "<mask>"), normalized=False) for t in SPECIAL_TOKENS]
        )
        tok.add_tokens([f"<code_{i}>" for i in range(NUM_CODE_TOKENS)])
        tok.add_tokens([f"<bin_{i}>" for i in range(NUM_BIN_TOKENS)])
        self._tok = tok
        self.bos_id = self._id("<s>")
        self.pad_id = self._id("<pad>")
        self.eos_id = self._id("</s>")

    def _id(self, token: str) -> int:
        token_id = self._tok.token_to_id(token)
        assert token_id is not None
        return token_id

    def __len__(self) -> int:
        """Vocabulary size including added tokens (the reference's ``len(tokenizer)``)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """BPE ids of ``text`` without BOS/EOS, cut to ``max_length`` like HF truncation."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ids[:max_length] if max_length is not None else ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)
