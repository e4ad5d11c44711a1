"""Triton's own statistics in tests, read once they have caught up with the answers.

Triton books an execution's statistics after its responses have left, so a test
that reads them right after its last answer can see the last execution missing.
`settled` polls until the counts a test caused are all there (a deadline for the
wait, not a timing assertion).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def settled(read: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = 30) -> T:
    """`read()` once `done` holds for it; the test fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not done(value := read()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still {value!r} after {timeout:g} s")
        time.sleep(0.05)
    return value
