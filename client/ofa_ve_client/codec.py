"""Items to Triton input tensors, and Triton results back to Predictions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc

from .contract import (
    INPUT_HYPOTHESIS,
    INPUT_IMAGE,
    INPUT_PREMISE,
    OUTPUT_ANSWER,
    OUTPUT_LABEL,
    OUTPUT_NAMES,
    OUTPUT_PROBS,
)
from .errors import ProtocolError
from .items import PreparedItem
from .prediction import Prediction


def _bytes_input(name: str, values: list[bytes]) -> tgrpc.InferInput:
    array = np.empty((len(values), 1), dtype=object)
    array[:, 0] = values
    tensor = tgrpc.InferInput(name, [len(values), 1], "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def build_inputs(items: Sequence[PreparedItem]) -> list[tgrpc.InferInput]:
    """One batched request: [N, 1] BYTES tensors.

    PREMISE is always sent (empty = none, per the interface): Triton's dynamic
    batcher only merges requests that carry the same set of inputs.
    """
    return [
        _bytes_input(INPUT_IMAGE, [it.image for it in items]),
        _bytes_input(INPUT_HYPOTHESIS, [it.hypothesis for it in items]),
        _bytes_input(INPUT_PREMISE, [it.premise for it in items]),
    ]


def requested_outputs() -> list[tgrpc.InferRequestedOutput]:
    return [tgrpc.InferRequestedOutput(name) for name in OUTPUT_NAMES]


def _column(result: Any, name: str, n: int, width: int) -> np.ndarray:
    array = result.as_numpy(name)
    if array is None:
        raise ProtocolError(f"server response has no {name} output")
    if array.shape != (n, width):
        raise ProtocolError(f"server returned {name} of shape {array.shape}; expected {(n, width)}")
    return array


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def parse_result(result: Any, n: int) -> list[Prediction]:
    """Predictions for the n items of one request, in request order."""
    labels = _column(result, OUTPUT_LABEL, n, 1)
    answers = _column(result, OUTPUT_ANSWER, n, 1)
    probs = _column(result, OUTPUT_PROBS, n, 3)
    return [
        Prediction.from_outputs(_text(labels[i, 0]), _text(answers[i, 0]), probs[i].tolist())
        for i in range(n)
    ]
