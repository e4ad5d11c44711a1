"""errors.py: what each error carries for the caller to report."""

from __future__ import annotations

from ofa_ve_engine import CheckpointError, InvalidInputError


def test_invalid_input_names_the_input_and_the_reason() -> None:
    error = InvalidInputError("PREMISE", "is not valid UTF-8")
    assert (error.input_name, error.reason) == ("PREMISE", "is not valid UTF-8")
    assert str(error) == "PREMISE: is not valid UTF-8"
    assert isinstance(error, ValueError)  # callers may treat it as a bad argument


def test_checkpoint_error_is_a_runtime_error() -> None:
    assert issubclass(CheckpointError, RuntimeError)
    assert str(CheckpointError("x/config.json is missing")) == "x/config.json is missing"
