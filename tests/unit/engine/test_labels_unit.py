"""labels.py: the one label order, and the engine following it whatever the answer file says."""

from __future__ import annotations

import dataclasses

import numpy as np
from ofa_ve_engine import ANSWER_TO_LABEL, ANSWERS, LABELS, VisualEntailmentEngine


def test_label_order_and_answers() -> None:
    assert LABELS == ("entailment", "neutral", "contradiction")
    assert ANSWERS == ("yes", "maybe", "no")
    assert ANSWER_TO_LABEL == {"yes": "entailment", "maybe": "neutral", "no": "contradiction"}


def test_engine_output_follows_labels_whatever_the_answer_file_order(
    tiny_engine: VisualEntailmentEngine, tiny_items: list
) -> None:
    """The answer file fixes the traversal order; PROBS columns stay in LABELS order."""
    reordered = dataclasses.replace(
        tiny_engine.settings, answer2label={"maybe": 0, "no": 1, "yes": 2}
    )
    other = VisualEntailmentEngine(reordered, tiny_engine.tokenizer, tiny_engine.model)
    assert tiny_engine.settings.answers != reordered.answers
    np.testing.assert_allclose(
        other.predict(tiny_items), tiny_engine.predict(tiny_items), atol=1e-6, rtol=0
    )
