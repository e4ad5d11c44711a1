"""scoring.py: traverse scoring (teacher-forced, trie-masked) and its one-pass shortcut."""

from __future__ import annotations

import pytest
import torch
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.scoring import AnswerScorer, AnswerTrie, ScoringInput


@pytest.fixture(scope="module")
def encoded(tiny_engine: VisualEntailmentEngine, tiny_items: list):
    """(model, encoder output, decoder prompts, prompt lengths) for the tiny items."""
    e = tiny_engine
    batch = e.collate(tiny_items)
    with torch.inference_mode():
        out = e.model.encoder(batch.input_ids, batch.images)
    return e.model, out, batch.decoder_prompts, batch.prompt_lengths


def _scorer(answers: list[list[int]]) -> AnswerScorer:
    return AnswerScorer(answers, bos_id=0, eos_id=2, pad_id=1)


def test_trie_allows_what_follows_each_prefix() -> None:
    trie = AnswerTrie([[5, 6], [5, 7], [8]], bos_id=0, eos_id=2)
    assert sorted(trie.next_tokens([0])) == [5, 8]
    assert sorted(trie.next_tokens([0, 5])) == [6, 7]
    assert trie.next_tokens([0, 5, 6]) == [2]
    assert trie.next_tokens([0, 9]) == [2]  # off the trie: EOS only


def test_single_token_detection() -> None:
    assert _scorer([[5], [6], [7]]).single_token
    assert not _scorer([[5], [5]]).single_token  # not distinct
    assert not _scorer([[5, 6], [7]]).single_token
    with pytest.raises(ValueError, match="at least one token"):
        _scorer([[5], []])
    with pytest.raises(ValueError, match="one distinct token"):
        _scorer([[5, 6], [7]]).score_one_pass(None, None)  # type: ignore[arg-type]


@torch.inference_mode()
def test_teacher_forced_equals_one_pass_for_single_tokens(encoded) -> None:
    scorer = _scorer([[9904], [117], [1978]])
    model, inputs = encoded[0], ScoringInput(*encoded[1:])
    general = scorer.score_teacher_forced(model, inputs)
    torch.testing.assert_close(general, scorer.score_one_pass(model, inputs), atol=1e-5, rtol=0)
    torch.testing.assert_close(general.sum(1), torch.ones(len(general)), atol=1e-6, rtol=0)


@torch.inference_mode()
def test_forced_continuations_add_nothing(encoded) -> None:
    """With one allowed token after each first token, two-token answers score as their
    first tokens: the trie leaves log-prob 0 for the forced second token and EOS."""
    two_tokens = _scorer([[9904, 400], [117, 401], [1978, 402]])
    assert not two_tokens.single_token
    got = two_tokens.score(*encoded)  # takes the teacher-forced path
    want = _scorer([[9904], [117], [1978]]).score_one_pass(encoded[0], ScoringInput(*encoded[1:]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_shared_prefixes_are_scored_per_item_independently(encoded) -> None:
    """Answers sharing a first token: batched scores equal item-by-item scores."""
    scorer = _scorer([[9904, 400], [9904, 401], [117]])
    model, out, prompts, lengths = encoded
    batched = scorer.score(model, out, prompts, lengths)
    for i in range(len(prompts)):
        alone = type(out)(
            last_hidden_state=out.last_hidden_state[i : i + 1],
            padding_mask=out.padding_mask[i : i + 1],
            position_embedding=out.position_embedding,
        )
        n = int(lengths[i])
        got = scorer.score(model, alone, prompts[i : i + 1, :n], lengths[i : i + 1])
        torch.testing.assert_close(got[0], batched[i], atol=1e-5, rtol=0)
