"""The one place that fixes the label order of every output.

Triton's PROBS tensor, the client's ``Prediction.probs`` and the engine's
``predict`` all use this order; OFA's own answer words map onto it.
"""

from __future__ import annotations

LABELS: tuple[str, str, str] = ("entailment", "neutral", "contradiction")
"""Label order of PROBS and of every probability vector the engine returns."""

ANSWERS: tuple[str, str, str] = ("yes", "maybe", "no")
"""OFA's answer word for each label, in LABELS order."""

ANSWER_TO_LABEL: dict[str, str] = dict(zip(ANSWERS, LABELS, strict=True))
"""OFA's answer word -> our label."""
