"""Requests of the load tools (soak, storm): built one way, sent one way, loopback only.

Why shared: both must send what a client sends (BYTES tensors along the batch dimension,
an empty PREMISE meaning absent), read an outcome the same way (answered, or the gRPC
status the server refused it with, and when) and refuse to aim load at anyone else.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ofa_ve_ops.paths import MODEL_NAME


def check_loopback(url: str) -> str:
    """`url` when its host is a loopback one, else ValueError."""
    host = url.rsplit(":", 1)[0].strip("[]")
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return url
    except ValueError:
        pass
    raise ValueError(f"load targets loopback only (127.0.0.0/8, ::1, localhost), not {host!r}")


@dataclass(frozen=True)
class Payload:
    """One item; `hostile`: bad input, which the server must refuse INVALID_ARGUMENT."""

    image: bytes
    hypothesis: bytes
    premise: bytes = b""
    hostile: bool = False


def inputs(items: Sequence[Payload]) -> list[Any]:
    """One request carrying `items`; PREMISE only when an item has one (empty: absent)."""
    from tritonclient.grpc import InferInput

    names = ["IMAGE", "HYPOTHESIS", *(["PREMISE"] if any(p.premise for p in items) else [])]
    tensors = []
    for name in names:
        values = [getattr(p, name.lower()) for p in items]
        tensors.append(InferInput(name, [len(values), 1], "BYTES"))
        tensors[-1].set_data_from_numpy(np.array(values, dtype=np.object_).reshape(-1, 1))
    return tensors


async def send(client: Any, items: Sequence[Payload], timeout_s: float) -> tuple:
    """One request through an async gRPC client: (seconds, outcome, message, result), the
    outcome "answered" or the status name of the refusal (INVALID_ARGUMENT...)."""
    from tritonclient.utils import InferenceServerException

    started = time.perf_counter()
    try:
        result = await client.infer(MODEL_NAME, inputs(items), client_timeout=timeout_s)
    except InferenceServerException as e:
        status = str(e.status()).rsplit(".", 1)[-1]
        return time.perf_counter() - started, status, e.message() or "", None
    return time.perf_counter() - started, "answered", "", result
