"""Text normalisation and the prompt templates, exactly as ModelScope's OFA preprocessor.

Reference: ``modelscope/preprocessors/ofa/base.py`` (``pre_caption``) and
``preprocessors/ofa/visual_entailment.py`` (the two templates and the
``model.prompt`` override). The override is applied with ``str.format`` to both
cases, as the reference does, so a one-slot override with a premise keeps only
the premise: faithful, if odd.
"""

from __future__ import annotations

import re

HYPOTHESIS_PROMPT = ' does the image describe " {} "?'
"""Prompt when the image alone is the premise."""

PREMISE_PROMPT = ' can image and text1 " {} " imply text2 " {} "?'
"""Prompt when a text premise (text1) accompanies the image; the hypothesis is text2."""

_LEADING_PUNCTUATION = ",.!?*#:;~"
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int | None = None) -> str:
    """Normalise a sentence the way OFA was trained: lower case, light cleanup, word cap."""
    caption = (
        caption.lower()
        .lstrip(_LEADING_PUNCTUATION)
        .replace("-", " ")
        .replace("/", " ")
        .replace("<person>", "person")
    )
    caption = _WHITESPACE_RUN.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if max_words is not None and len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def build_prompt(
    hypothesis: str,
    premise: str | None,
    max_words: int,
    override: str | None = None,
) -> str:
    """The source sentence fed to the encoder (before BPE, BOS and EOS).

    Args:
        hypothesis, premise: the item's texts (premise None: the image alone).
        max_words: each text is cut to this many words (``pre_caption``).
        override: the checkpoint's own prompt template, if it has one.
    """
    hyp = pre_caption(hypothesis, max_words)
    if premise is None:
        return (override or HYPOTHESIS_PROMPT).format(hyp)
    return (override or PREMISE_PROMPT).format(pre_caption(premise, max_words), hyp)
