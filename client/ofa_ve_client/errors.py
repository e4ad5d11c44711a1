"""Typed errors, so callers can tell bad input from an unhealthy server.

Every error carries the server's message and the gRPC status name (None when
the client raised it before sending anything). In batch calls `item_index`
says which input item the error belongs to.

The classes are grouped by gRPC status family, one base per family, so that a
caller can catch a whole family or one case of it:

- InvalidInputError: INVALID_ARGUMENT, or input the client refused itself.
- UnavailableError: the request was not processed and may be retried
  (UNAVAILABLE, RESOURCE_EXHAUSTED, a model not loaded yet).
- CallAbortedError: the call ended before an answer (DEADLINE_EXCEEDED,
  CANCELLED, the client closed).
- ServerSideError: the server cannot answer as asked, and a retry will not
  change that (INTERNAL, UNKNOWN, NOT_FOUND, UNAUTHENTICATED, an answer off
  the interface).

The families are new bases above the classes of earlier releases; every one
of those classes keeps its name and catches exactly what it caught before.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .contract import INPUT_NAMES

_INPUT_NAME_RE = re.compile(r"\b(" + "|".join(INPUT_NAMES) + r")\b")


class VisualEntailmentError(Exception):
    """Base class of every error this SDK raises."""

    def __init__(
        self,
        message: str,
        *,
        status: str | None = None,
        debug_details: str | None = None,
        item_index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.debug_details = debug_details
        self.item_index = item_index
        self.attempts = 1  # how many attempts the call made before giving up

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword-only arguments; rebuild from state so that
        # copy.copy() and pickling work for all of them.
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))

    def for_item(self, index: int) -> VisualEntailmentError:
        """A copy attributed to batch item `index` (one error object per item)."""
        clone = copy.copy(self)
        clone.item_index = index
        clone.__cause__ = self.__cause__
        return clone

    def __str__(self) -> str:
        where = f"item {self.item_index}: " if self.item_index is not None else ""
        status = f"[{self.status}] " if self.status else ""
        return f"{status}{where}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (what the CLI writes for a failed row)."""
        out: dict[str, Any] = {"type": type(self).__name__, "message": self.message}
        if self.status:
            out["status"] = self.status
        input_name = getattr(self, "input_name", None)
        if input_name:
            out["input"] = input_name
        return out


def _rebuild(
    cls: type[VisualEntailmentError], args: tuple[Any, ...], state: dict[str, Any]
) -> VisualEntailmentError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidInputError(VisualEntailmentError, ValueError):
    """The input was rejected: by the server (INVALID_ARGUMENT) or before sending.

    `input_name` is IMAGE, HYPOTHESIS or PREMISE when the message names one.
    """

    def __init__(self, message: str, *, input_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        if input_name is None:
            match = _INPUT_NAME_RE.search(message)
            input_name = match.group(1) if match else None
        self.input_name = input_name


class ImageFetchError(InvalidInputError):
    """An http(s) image URL could not be fetched (status, size cap, timeout, network)."""

    def __init__(self, message: str, *, url: str, **kwargs: Any) -> None:
        super().__init__(message, input_name="IMAGE", **kwargs)
        self.url = url


# What gRPC says when the far end is not a gRPC server (Triton's HTTP port given by
# mistake) against when nothing listens at all.
_TLS_RE = re.compile(r"ssl|handshake|certificate", re.IGNORECASE)
_NOT_GRPC_RE = re.compile(r"http1\.x server|Socket closed|Connection reset|recvmsg:")
_NOTHING_LISTENS_RE = re.compile(
    r"Connection refused|failed to connect to all addresses|DNS resolution failed|"
    r"Name or service not known|No route to host|Deadline Exceeded while connecting",
    re.IGNORECASE,
)
HINT_NOT_GRPC = (
    "the address answered, but not as a gRPC server: is it Triton's HTTP port? This "
    "client speaks gRPC, which Triton serves on port 8001 by default (8000 is HTTP, "
    "8002 metrics)"
)
HINT_NOTHING_LISTENS = (
    "is the server running and is this its gRPC address? `make serve` starts one on "
    "127.0.0.1:8001 (gRPC; 8000 is its HTTP port); give another with --url HOST:PORT "
    "or $OFA_VE_URL"
)


HINT_TLS = (
    "the TLS handshake failed: the server may not use TLS (drop --ssl), or its "
    "certificate is not one the client trusts (--root-cert, --tls-server-name)"
)


def connection_hint(message: str) -> str | None:
    """What to do about a connection failure, from gRPC's own words (None: no advice)."""
    if _TLS_RE.search(message):
        return HINT_TLS
    if _NOT_GRPC_RE.search(message):
        return HINT_NOT_GRPC
    if _NOTHING_LISTENS_RE.search(message):
        return HINT_NOTHING_LISTENS
    return None


class UnavailableError(VisualEntailmentError):
    """Family: the server did not process the request and may later (UNAVAILABLE,
    RESOURCE_EXHAUSTED, a model not loaded yet). The client retries these."""


class CallAbortedError(VisualEntailmentError):
    """Family: the call ended before an answer came (DEADLINE_EXCEEDED, CANCELLED,
    or the client was closed)."""


class ServerSideError(VisualEntailmentError):
    """Family: the server cannot answer this request as asked, and a retry will not
    change that (INTERNAL, UNKNOWN, NOT_FOUND, UNAUTHENTICATED, PERMISSION_DENIED,
    or an answer that does not match the interface)."""


class ServerUnavailableError(UnavailableError, ConnectionError):
    """No server answered (UNAVAILABLE): down, restarting, or unreachable. Retryable.

    `hint` says what to do when the message shows a connection that never worked
    (nothing listening, the HTTP port given for the gRPC one); None otherwise.
    """

    @property
    def hint(self) -> str | None:
        return connection_hint(self.message)

    def __str__(self) -> str:
        hint = self.hint
        return super().__str__() + (f" (hint: {hint})" if hint else "")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.hint:
            out["hint"] = self.hint
        return out


class ModelNotReadyError(ServerUnavailableError):
    """The server knows the model but has no version loaded right now (loading, unloading,
    or the server is shutting down). Triton says NOT_FOUND "... has no available
    versions"; it passes like UNAVAILABLE, so it is retried like UNAVAILABLE."""


class ResourceExhaustedError(UnavailableError):
    """The server refused for lack of capacity: RESOURCE_EXHAUSTED, or Triton's queue-full
    refusal (UNAVAILABLE "Exceeds maximum queue size"), given at once. Retryable."""


class DeadlineExceededError(CallAbortedError, TimeoutError):
    """The call's deadline passed before an answer came (DEADLINE_EXCEEDED or retry budget)."""


class ModelNotFoundError(ServerSideError):
    """The server does not know the model or version (NOT_FOUND)."""


class AuthenticationError(ServerSideError):
    """Credentials were missing or refused (UNAUTHENTICATED, PERMISSION_DENIED)."""


class RequestCancelledError(CallAbortedError):
    """The call was cancelled (CANCELLED)."""


class ServerError(ServerSideError):
    """The server failed in a way not listed above (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)."""


class ProtocolError(ServerSideError):
    """The server's answer does not match the interface (missing outputs, wrong shapes)."""


class ClientClosedError(CallAbortedError):
    """The client was used after close()."""


_BY_STATUS: dict[str, type[VisualEntailmentError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "UNAVAILABLE": ServerUnavailableError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "NOT_FOUND": ModelNotFoundError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": AuthenticationError,
    "CANCELLED": RequestCancelledError,
}


def status_name(raw: object) -> str | None:
    """'StatusCode.UNAVAILABLE' (tritonclient's form) or a grpc.StatusCode -> 'UNAVAILABLE'."""
    if raw is None:
        return None
    name = getattr(raw, "name", None) or str(raw)
    return name.rsplit(".", 1)[-1] or None


def from_status(
    status: str | None, message: str, *, debug_details: str | None = None
) -> VisualEntailmentError:
    """The typed error for a gRPC status name."""
    cls = _BY_STATUS.get(status or "", ServerError)
    if status == "UNAVAILABLE" and "protocol is restricted" in message:
        # Triton's --grpc-restricted-protocol answers a missing/wrong key with
        # UNAVAILABLE; it is a credentials problem, and retrying cannot help.
        cls = AuthenticationError
    elif status == "UNAVAILABLE" and "Exceeds maximum queue size" in message:
        # Triton's queue-full refusal: the server is up but out of capacity right now.
        cls = ResourceExhaustedError
    elif status == "NOT_FOUND" and "no available versions" in message:
        cls = ModelNotReadyError
    return cls(message, status=status, debug_details=debug_details)


def from_triton(exc: BaseException) -> VisualEntailmentError:
    """Translate tritonclient's InferenceServerException (or a raw grpc.RpcError)."""
    if isinstance(exc, VisualEntailmentError):
        return exc
    status_fn = getattr(exc, "status", None)
    if callable(status_fn):  # InferenceServerException
        status = status_name(status_fn())
        message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
        debug_fn = getattr(exc, "debug_details", None)
        debug = debug_fn() if callable(debug_fn) else None
    else:
        code_fn = getattr(exc, "code", None)  # grpc.RpcError
        status = status_name(code_fn()) if callable(code_fn) else None
        details_fn = getattr(exc, "details", None)
        message = details_fn() if callable(details_fn) else str(exc)
        debug = None
    return from_status(status, message or type(exc).__name__, debug_details=debug)
