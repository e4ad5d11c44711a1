"""Client SDK for the `ofa_visual_entailment` model on Triton Inference Server (gRPC).

    from ofa_ve_client import VisualEntailmentClient

    with VisualEntailmentClient("127.0.0.1:8001") as client:
        print(client.predict("cat.jpg", "there is a cat"))

Importing this package is cheap: tritonclient, gRPC, numpy and PIL load only
when a client class is first used (`VisualEntailmentClient` and friends are
resolved on attribute access).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .contract import ANSWERS, LABELS, MODEL_NAME
from .errors import (
    AuthenticationError,
    CallAbortedError,
    ClientClosedError,
    DeadlineExceededError,
    ImageFetchError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    ProtocolError,
    RequestCancelledError,
    ResourceExhaustedError,
    ServerError,
    ServerSideError,
    ServerUnavailableError,
    UnavailableError,
    VisualEntailmentError,
)
from .prediction import Prediction

if TYPE_CHECKING:
    from .async_client import AsyncVisualEntailmentClient
    from .classification import DEFAULT_HYPOTHESIS_TEMPLATE, Classification
    from .config import KeepAliveOptions, TLSOptions
    from .items import Item
    from .retry import RetryPolicy
    from .sync_client import VisualEntailmentClient
    from .url_fetch import ImageFetchOptions

__version__ = "0.1.0"

_LAZY = {
    "VisualEntailmentClient": "sync_client",
    "AsyncVisualEntailmentClient": "async_client",
    "RetryPolicy": "retry",
    "KeepAliveOptions": "config",
    "TLSOptions": "config",
    "ImageFetchOptions": "url_fetch",
    "Item": "items",
    "Classification": "classification",
    "DEFAULT_HYPOTHESIS_TEMPLATE": "classification",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ANSWERS",
    "DEFAULT_HYPOTHESIS_TEMPLATE",
    "LABELS",
    "MODEL_NAME",
    "AsyncVisualEntailmentClient",
    "AuthenticationError",
    "CallAbortedError",
    "Classification",
    "ClientClosedError",
    "DeadlineExceededError",
    "ImageFetchError",
    "ImageFetchOptions",
    "InvalidInputError",
    "Item",
    "KeepAliveOptions",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "Prediction",
    "ProtocolError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ServerError",
    "ServerSideError",
    "ServerUnavailableError",
    "TLSOptions",
    "UnavailableError",
    "VisualEntailmentClient",
    "VisualEntailmentError",
    "__version__",
]
