"""Text normalisation and prompts: the reference's behaviour, case by case."""

from __future__ import annotations

import pytest
from ofa_ve_engine.text import HYPOTHESIS_PROMPT, PREMISE_PROMPT, build_prompt, pre_caption


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("There are two BIRDS.", "there are two birds."),
        ("...!?Leading punctuation goes", "leading punctuation goes"),
        ("well-known black/white cat", "well known black white cat"),
        ("a <person> rides", "a person rides"),
        ("  lots   of\t\tspace \n", "lots of space"),
        ("Trailing punctuation stays!", "trailing punctuation stays!"),
        ("#:;~*,hash first", "hash first"),
        ("ÜBER Café", "über café"),
    ],
)
def test_pre_caption_matches_reference_rules(raw: str, expected: str) -> None:
    assert pre_caption(raw) == expected


def test_pre_caption_keeps_at_most_max_words() -> None:
    assert pre_caption("one two three four five", max_words=3) == "one two three"


def test_prompts_for_image_only_and_text_premise() -> None:
    assert build_prompt("Two birds.", None, 256) == ' does the image describe " two birds. "?'
    assert (
        build_prompt("Two birds.", "A Photo.", 256)
        == ' can image and text1 " a photo. " imply text2 " two birds. "?'
    )
    assert HYPOTHESIS_PROMPT.count("{}") == 1 and PREMISE_PROMPT.count("{}") == 2


def test_prompt_override_applies_to_both_cases_like_the_reference() -> None:
    override = " is it true that {}?"
    assert build_prompt("Cats", None, 256, override) == " is it true that cats?"
    # The reference formats the override with (premise, hypothesis): one slot keeps the premise.
    assert build_prompt("Cats", "Dogs", 256, override) == " is it true that dogs?"
