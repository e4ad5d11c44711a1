"""Waiting in tests on an observable state, with a deadline (never a timing assertion).

`settled` polls a reading until it satisfies a test; `wait_for` polls a condition.
One use: Triton books an execution's statistics after its responses have left, so
a test that reads them right after its last answer can see the last execution
missing, and waits with `settled` until the counts it caused are all there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def settled(
    read: Callable[[], T],
    done: Callable[[T], bool],
    what: str,
    timeout: float = 30,
    poll: float = 0.05,
) -> T:
    """`read()` once `done` holds for it; the test fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not done(value := read()):
        if time.monotonic() > deadline:  # a deadline for the wait
            pytest.fail(f"{what}: still {value!r} after {timeout:g} s")
        time.sleep(poll)
    return value


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0,
             poll: float = 0.02) -> None:  # fmt: skip
    """Poll `condition()` until it is true; fail naming `what` after `timeout` s."""
    settled(condition, bool, what, timeout, poll)
