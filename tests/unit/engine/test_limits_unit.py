"""limits.py: per-item limits, validated when built."""

from __future__ import annotations

import dataclasses

import pytest
from ofa_ve_engine import InputLimits


def test_defaults_are_generous_and_positive() -> None:
    limits = InputLimits()
    assert limits.max_image_bytes == 20 * 1024 * 1024
    assert limits.max_image_pixels == 40_000_000 and limits.max_text_bytes == 8192


@pytest.mark.parametrize("name", ["max_image_bytes", "max_image_pixels", "max_text_bytes"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_limits_are_refused_by_name(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"InputLimits.{name} must be positive"):
        InputLimits(**{name: value})


def test_limits_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        InputLimits().max_text_bytes = 1  # type: ignore[misc]
