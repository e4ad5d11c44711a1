"""Zero-shot classification and one-image-many-hypotheses: the logic both clients share.

The clients' operations (base.py) only do the I/O (read the image once, send
the items through predict_batch); everything else lives here: checking the
inputs, splitting and turning candidate labels into hypotheses, scoring and
ranking. Nothing here talks to a server or imports tritonclient.

How the scores relate to Hugging Face's zero-shot-classification pipeline
(`pipeline("zero-shot-classification")(sequence, candidate_labels,
hypothesis_template="This example is {}.", multi_label=False)`), which runs
an NLI model on each (sequence, template.format(label)) pair:

- single-label: HF softmaxes the candidates' *entailment logits* over the
  candidates. The server returns probabilities, not logits, so the score used
  here is log P(entailment) = logit_e - logsumexp(logit_e, logit_n, logit_c),
  and the softmax over candidates of that is P_e(i) / sum_j P_e(j). It equals
  HF's number exactly when every candidate's logsumexp is the same, and in
  any case ranks the candidates as their entailment probabilities do. The
  scores sum to 1.
- multi-label: HF scores each candidate on its own with a softmax of
  (contradiction, entailment) logits, i.e. P_e / (P_e + P_c), dropping
  neutral. Here each candidate's score is its own P(entailment) from the
  3-way softmax (neutral kept): what the model says about that hypothesis,
  independent of the other candidates. The scores do not sum to 1.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInputError
from .items import Item, encode_text
from .prediction import Prediction

DEFAULT_HYPOTHESIS_TEMPLATE = "This is a photo of {}."
"""The default template: the subject is an image (HF's text default is "This example is {}.")."""

ENTAILMENT = "entailment"


def check_hypotheses(hypotheses: Iterable[Any]) -> list[Any]:
    """The hypotheses as a list; a bare string is refused (it would be split into characters).

    The items themselves are checked per item by predict_batch, so that one
    bad hypothesis fails only its own slot.
    """
    if isinstance(hypotheses, (str, bytes)):
        raise InvalidInputError(
            "hypotheses must be a list of strings, not a single "
            f"{type(hypotheses).__name__}; wrap it: [hypothesis]"
        )
    return list(hypotheses)


def check_premise(premise: Any) -> None:
    """Check the shared premise once up front instead of failing every item with it."""
    encode_text(premise, "PREMISE", required=False)


def many_items(image: bytes, hypotheses: Sequence[Any], premise: str | None) -> list[Item]:
    """One item per hypothesis, all with the same (already encoded) image and premise."""
    return [Item(image, hypothesis, premise) for hypothesis in hypotheses]


def split_labels(text: str) -> list[str]:
    """The labels in a string: split on commas, each stripped, empty parts dropped.

    The one label-split rule of the SDK and the CLI: a string of labels (the
    SDK's `candidate_labels="cat, dog"`, as in HF's pipeline, and every LABEL
    argument of `ofa-ve classify`) is split on commas; a list's items are
    labels as given.
    """
    return [part.strip() for part in text.split(",") if part.strip()]


def check_labels(candidate_labels: Any) -> tuple[str, ...]:
    """Candidate labels as a tuple of distinct, non-empty strings.

    As in HF's pipeline, a single string is taken as comma-separated labels
    ("cat, dog" -> ("cat", "dog"); see `split_labels`).
    """
    if isinstance(candidate_labels, str):
        labels: list[Any] = split_labels(candidate_labels)
    elif isinstance(candidate_labels, Iterable) and not isinstance(candidate_labels, bytes):
        labels = list(candidate_labels)
    else:
        raise InvalidInputError(
            f"candidate_labels must be a list of strings, not {type(candidate_labels).__name__}"
        )
    if not labels:
        raise InvalidInputError("candidate_labels: at least one label is needed, got none")
    seen: set[str] = set()
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            raise InvalidInputError(
                f"candidate_labels[{index}]: must be a str, not {type(label).__name__}"
            )
        if not label.strip():
            raise InvalidInputError(f"candidate_labels[{index}]: is empty")
        if label in seen:
            raise InvalidInputError(
                f"candidate_labels[{index}]: duplicate label {label!r} (labels must be unique: "
                "each one is a key of the result)"
            )
        seen.add(label)
    return tuple(labels)


def check_template(template: Any) -> str:
    """A hypothesis template with a `{}` placeholder where the label goes (as HF requires).

    `str.format` syntax: `{}` or `{0}` (repeatable); literal braces are `{{` and `}}`.
    """
    if not isinstance(template, str):
        raise InvalidInputError(
            f"hypothesis_template: must be a str, not {type(template).__name__}"
        )
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise InvalidInputError(f"hypothesis_template: {template!r} is malformed ({exc})") from None
    if not fields or any(name not in ("", "0") for name in fields):
        raise InvalidInputError(
            f"hypothesis_template: {template!r} needs a {{}} placeholder where the label goes "
            'and no other fields, e.g. "This is a photo of {}."'
        )
    try:  # e.g. "{}" mixed with "{0}", or a bad conversion such as "{!x}"
        template.format("label")
    except (ValueError, IndexError) as exc:
        raise InvalidInputError(f"hypothesis_template: {template!r} is malformed ({exc})") from None
    return template


def softmax_log_entailment(entailment_probs: Sequence[float]) -> list[float]:
    """Softmax over candidates of log P(entailment): P_e(i) / sum_j P_e(j), computed stably.

    If every probability is 0 (float32 underflow), the candidates are equally likely.
    """
    if not entailment_probs:
        return []
    logs = [math.log(p) if p > 0 else -math.inf for p in entailment_probs]
    top = max(logs)
    if top == -math.inf:
        return [1.0 / len(logs)] * len(logs)
    weights = [math.exp(x - top) for x in logs]
    total = math.fsum(weights)
    return [w / total for w in weights]


def rank(scores: Sequence[float]) -> list[int]:
    """Candidate indices, best score first; ties keep the candidates' order (stable)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


@dataclass(frozen=True)
class Classification:
    """A zero-shot classification of one image (and optional text premise).

    `labels` are ranked best first; `scores`, `hypotheses` (the sentence sent
    for each label) and `predictions` (the full verdict for each) are aligned
    with them. Single-label scores sum to 1; multi-label scores are each
    label's own P(entailment). See the module docstring for how this relates
    to Hugging Face's zero-shot-classification pipeline.
    """

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    hypotheses: tuple[str, ...]
    predictions: tuple[Prediction, ...] = field(hash=False)
    multi_label: bool = False
    premise: str | None = None

    @property
    def label(self) -> str:
        """The best label."""
        return self.labels[0]

    @property
    def score(self) -> float:
        """The best label's score."""
        return self.scores[0]

    def scores_by_label(self) -> dict[str, float]:
        """label -> score, best first."""
        return dict(zip(self.labels, self.scores, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """HF pipeline's shape ({"labels", "scores"}) plus what was asked (JSON-friendly).

        HF's "sequence" (the text classified) has no JSON form here, the subject
        being an image; `premise` is the text part, None when the image is alone.
        """
        return {
            "labels": list(self.labels),
            "scores": list(self.scores),
            "hypotheses": list(self.hypotheses),
            "multi_label": self.multi_label,
            "premise": self.premise,
        }


@dataclass(frozen=True)
class ZeroShotQuery:
    """Checked classify() arguments and the hypotheses they expand to (one per label)."""

    labels: tuple[str, ...]
    hypotheses: tuple[str, ...]
    multi_label: bool
    premise: str | None

    @classmethod
    def build(
        cls,
        candidate_labels: Any,
        hypothesis_template: Any = DEFAULT_HYPOTHESIS_TEMPLATE,
        multi_label: bool = False,
        premise: str | None = None,
    ) -> ZeroShotQuery:
        """Validate everything before any I/O, so a typo costs no request."""
        labels = check_labels(candidate_labels)
        template = check_template(hypothesis_template)
        check_premise(premise)
        return cls(labels, tuple(template.format(label) for label in labels), multi_label, premise)

    def result(self, predictions: Sequence[Prediction]) -> Classification:
        """Score and rank the per-label predictions (in candidate order) into a Classification."""
        if len(predictions) != len(self.labels):
            raise ValueError(f"{len(predictions)} predictions for {len(self.labels)} labels")
        entailment = [p.probs[ENTAILMENT] for p in predictions]
        scores = entailment if self.multi_label else softmax_log_entailment(entailment)
        order = rank(scores)
        return Classification(
            labels=tuple(self.labels[i] for i in order),
            scores=tuple(scores[i] for i in order),
            hypotheses=tuple(self.hypotheses[i] for i in order),
            predictions=tuple(predictions[i] for i in order),
            multi_label=self.multi_label,
            premise=self.premise,
        )
