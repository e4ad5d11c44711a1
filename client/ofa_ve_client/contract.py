"""The served model's public interface (docs/interface.md), in one place.

Kept free of imports so that `import ofa_ve_client` stays fast.
"""

from __future__ import annotations

MODEL_NAME = "ofa_visual_entailment"
DEFAULT_URL = "127.0.0.1:8001"

INPUT_IMAGE = "IMAGE"
INPUT_HYPOTHESIS = "HYPOTHESIS"
INPUT_PREMISE = "PREMISE"
INPUT_NAMES = (INPUT_IMAGE, INPUT_HYPOTHESIS, INPUT_PREMISE)

OUTPUT_LABEL = "LABEL"
OUTPUT_ANSWER = "ANSWER"
OUTPUT_PROBS = "PROBS"
OUTPUT_NAMES = (OUTPUT_LABEL, OUTPUT_ANSWER, OUTPUT_PROBS)

# PROBS columns come in this order; ANSWERS[i] is OFA's word for LABELS[i].
LABELS = ("entailment", "neutral", "contradiction")
ANSWERS = ("yes", "maybe", "no")
