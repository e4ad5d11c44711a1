"""The result type: one verdict for one (image, hypothesis[, premise]) item."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .contract import ANSWERS, LABELS
from .errors import ProtocolError


@dataclass(frozen=True)
class Prediction:
    """What the model says about one item.

    `score` is the probability of `label`; `probs` maps every label to its
    probability (they sum to 1). `answer` is OFA's word for the label, which
    is what ModelScope's pipeline returns as `labels`.
    """

    label: str
    answer: str
    score: float
    probs: Mapping[str, float] = field(hash=False)

    @classmethod
    def from_outputs(cls, label: str, answer: str, probs: Sequence[float]) -> Prediction:
        """Build from one row of LABEL, ANSWER and PROBS, checking them against the contract."""
        if label not in LABELS:
            raise ProtocolError(
                f"server returned unknown LABEL {label!r}; expected one of {LABELS}"
            )
        if answer != ANSWERS[LABELS.index(label)]:
            raise ProtocolError(f"server returned ANSWER {answer!r} for LABEL {label!r}")
        if len(probs) != len(LABELS):
            raise ProtocolError(f"server returned {len(probs)} PROBS; expected {len(LABELS)}")
        table = {name: float(p) for name, p in zip(LABELS, probs, strict=True)}
        return cls(label=label, answer=answer, score=table[label], probs=table)

    def to_modelscope(self) -> dict[str, Any]:
        """ModelScope pipeline's output shape: `{'labels': answer, 'scores': score}`.

        Lets code written against `pipeline(Tasks.visual_entailment, ...)` move
        over by swapping `pipe(inputs)` for `client.predict(...).to_modelscope()`.
        """
        return {"labels": self.answer, "scores": self.score}

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-friendly dict (what the CLI prints)."""
        return {
            "label": self.label,
            "answer": self.answer,
            "score": self.score,
            "probs": dict(self.probs),
        }
