"""Errors the engine raises on purpose, each carrying what a caller must report."""

from __future__ import annotations


class InvalidInputError(ValueError):
    """One item's input is unusable; the message names the input and the reason.

    Raised by ``VisualEntailmentEngine.prepare`` so that a server can fail that
    request alone (INVALID_ARG) and still answer the rest of the batch.
    """

    def __init__(self, input_name: str, reason: str) -> None:
        self.input_name = input_name
        self.reason = reason
        super().__init__(f"{input_name}: {reason}")


class RequestCancelled(RuntimeError):
    """The request's client has gone (cancelled, or its deadline passed) while its
    execution ran: its remaining items are not computed."""

    def __init__(self) -> None:
        super().__init__("request cancelled")


class CheckpointError(RuntimeError):
    """A model directory is missing, incomplete, corrupt or of an unsupported kind."""
