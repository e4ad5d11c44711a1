"""One label order everywhere: the client's copy of the labels (ofa_ve_client.contract,
kept free of imports so that the client installs without the engine) is the engine's,
and the model configuration and the interface docs state the same order.

PROBS columns are read by position, so a client whose LABELS drifted from the engine's
would silently swap probabilities; this ties the copies together without a server.
"""

from __future__ import annotations

import re

import pytest
from ofa_ve_client import contract
from ofa_ve_client.prediction import Prediction
from ofa_ve_engine import labels as engine_labels
from ofa_ve_ops.paths import CONFIG_PBTXT, REPO_ROOT

LABEL_WORDS = r"(entailment|neutral|contradiction)"
ANSWER_WORDS = r"(yes|maybe|no)"


def words_in_order(text: str, pattern: str) -> list[tuple[str, ...]]:
    """Every run of three of `pattern`'s words separated by commas, 'or' or 'and'."""
    sep = r"`?\"?\s*(?:,\s*|\s+or\s+|\s+and\s+)\s*`?\"?"
    triple = rf"`?\"?{pattern}{sep}{pattern}{sep}{pattern}"
    return [m.groups() for m in re.finditer(triple, text)]


def test_client_labels_and_answers_are_the_engines():
    assert contract.LABELS == engine_labels.LABELS
    assert contract.ANSWERS == engine_labels.ANSWERS
    for answer, label in engine_labels.ANSWER_TO_LABEL.items():
        assert contract.ANSWERS.index(answer) == contract.LABELS.index(label)


def test_client_reads_probs_columns_in_the_engines_order():
    probs = [0.1, 0.7, 0.2]  # column i belongs to the engine's LABELS[i]
    label = engine_labels.LABELS[1]
    answer = engine_labels.ANSWERS[1]
    prediction = Prediction.from_outputs(label, answer, probs)
    assert list(prediction.probs) == list(engine_labels.LABELS)
    assert [prediction.probs[name] for name in engine_labels.LABELS] == pytest.approx(probs)
    assert prediction.label == label and prediction.answer == answer


def test_the_package_exports_the_contracts_labels():
    import ofa_ve_client

    assert ofa_ve_client.LABELS is contract.LABELS
    assert ofa_ve_client.ANSWERS is contract.ANSWERS


@pytest.mark.parametrize(
    "path",
    [CONFIG_PBTXT, REPO_ROOT / "docs" / "interface.md", REPO_ROOT / "docs" / "architecture.md"],
    ids=lambda p: p.name,
)
def test_config_and_docs_state_the_same_order(path):
    text = path.read_text()
    label_orders = words_in_order(text, LABEL_WORDS)
    answer_orders = words_in_order(text, ANSWER_WORDS)
    assert label_orders, f"{path.name} names no label order"
    assert set(label_orders) == {engine_labels.LABELS}, label_orders
    assert set(answer_orders) <= {engine_labels.ANSWERS}, answer_orders
