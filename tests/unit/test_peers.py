"""The peers tool's logic (`ofa_ve_bench.peers`) on hand-made runners: no network, no timing.

Why: its table is what says whether the engine keeps up with ONNX Runtime and
OpenVINO, so what it compares (each peer against ours in float32, every item, one
item per call), what it flags (a float32 peer beyond 1e-4) and what it leaves out
(rows that cannot run here, with the reason) are checked on numbers known in advance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from ofa_ve_bench import peers, results
from ofa_ve_bench.engine_runner import Predict

pytestmark = pytest.mark.timeout(60)

REFERENCE = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3]], dtype=np.float32)


def _runner(table: np.ndarray, calls: list[int] | None = None) -> Predict:
    """A peer whose answer for item i is row i of ``table``; counts its calls."""

    def run(items: Sequence[int]) -> np.ndarray:
        if calls is not None:
            calls.append(len(items))
        return table[list(items)]

    return run


def test_compare_gives_the_largest_difference_and_the_share_of_equal_labels() -> None:
    """`results.compare`, the one comparison of answers (peers, precision, the GPU check)."""
    other = REFERENCE.copy()
    other[2] = [0.45, 0.3, 0.25]  # label flips from neutral to entailment
    other[0, 0] += 2e-5
    row = results.compare(REFERENCE, other)
    assert row["max_prob_diff"] == pytest.approx(0.15, abs=1e-6)
    assert row["label_agreement"] == pytest.approx(2 / 3, abs=1e-5)
    assert row["flips"] == 1 and row["flip_margins_fp32"] == [pytest.approx(0.1, abs=1e-5)]
    same = results.compare(REFERENCE, REFERENCE)
    assert (same["max_prob_diff"], same["label_agreement"]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        results.compare(REFERENCE, REFERENCE[:2])


def test_side_by_side_compares_every_peer_with_ours_in_float32() -> None:
    close = REFERENCE + np.float32(5e-5)
    far = REFERENCE.copy()
    far[1] = [0.5, 0.3, 0.2]
    calls: list[int] = []
    rows = peers.side_by_side(
        [
            peers.Peer("ours", "float32", _runner(REFERENCE, calls)),
            peers.Peer("onnxruntime", "float32", _runner(close)),
            peers.Peer("openvino", "float32", _runner(far)),
            peers.Peer("openvino", "bfloat16", _runner(far)),
            peers.Peer("ours", "int8", None, "no int8 path yet"),
        ],
        [0, 1, 2],
        seconds=0.01,
        rounds=2,
    )
    by_key = {(r.runtime, r.precision): r for r in rows}
    assert [(r.runtime, r.precision) for r in rows] == list(by_key)  # the peers' order
    assert set(calls) == {1}  # one item per call, always
    ours = by_key[("ours", "float32")]
    assert (ours.max_prob_diff, ours.label_agreement, ours.within_tolerance) == (0.0, 1.0, True)
    assert ours.calls_timed >= 2 and ours.ms_per_item is not None
    ort = by_key[("onnxruntime", "float32")]
    assert ort.within_tolerance is True and ort.label_agreement == 1.0
    for key in (("openvino", "float32"), ("openvino", "bfloat16")):
        assert by_key[key].max_prob_diff == pytest.approx(0.4, abs=1e-6)
        assert by_key[key].label_agreement == pytest.approx(2 / 3, abs=1e-5)
    assert by_key[("openvino", "float32")].within_tolerance is False
    assert by_key[("openvino", "bfloat16")].within_tolerance is None  # no bound for bf16
    skipped = by_key[("ours", "int8")]
    assert skipped.ms_per_item is None and skipped.note == "no int8 path yet"

    table = peers.markdown(rows, "a test machine")
    assert table.startswith("Machine: a test machine")
    assert "| openvino | float32 |" in table and "(over 0.0001)" in table
    assert "| ours | int8 |  |  |  |  | no int8 path yet |" in table


def test_side_by_side_needs_ours_in_float32() -> None:
    with pytest.raises(ValueError, match="reference"):
        peers.side_by_side(
            [peers.Peer("openvino", "float32", _runner(REFERENCE))], [0], seconds=0.01
        )
