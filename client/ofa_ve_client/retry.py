"""Retries with exponential backoff and full jitter, bounded by the call's deadline.

Only statuses that mean "not processed, try again" are retried (UNAVAILABLE,
RESOURCE_EXHAUSTED by default; a model that is loading or unloading counts as
UNAVAILABLE, see ModelNotReadyError); inference is idempotent, so a retry after a
connection dropped mid-call is safe. With several server URLs a retry first
moves to the next URL at once and backs off only after every URL was tried.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import (
    AuthenticationError,
    DeadlineExceededError,
    ServerUnavailableError,
    VisualEntailmentError,
)

RETRYABLE_STATUSES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry one call.

    The n-th backoff (n = 0, 1, ...) is uniform in
    [0, min(max_backoff, initial_backoff * multiplier**n)] seconds ("full jitter",
    which spreads out the clients that all lost the same server at once).
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retryable_statuses: frozenset[str] = field(default=RETRYABLE_STATUSES)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoffs must be >= 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        object.__setattr__(self, "retryable_statuses", frozenset(self.retryable_statuses))

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """One attempt, no failover."""
        return cls(max_attempts=1)

    def backoff(self, n: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
        """Seconds to wait before the n-th backoff round (full jitter)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier**n)
        return uniform(0.0, cap)

    def is_retryable(self, error: VisualEntailmentError) -> bool:
        # Triton reports a missing auth header as UNAVAILABLE; that never heals by retrying.
        if isinstance(error, AuthenticationError):
            return False
        if isinstance(error, ServerUnavailableError):  # includes ModelNotReadyError
            return "UNAVAILABLE" in self.retryable_statuses
        return error.status in self.retryable_statuses


class CallBudget:
    """Attempt count and deadline of one logical call (all its retries together)."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None,
        n_endpoints: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.n_endpoints = max(1, n_endpoints)
        # Failover needs at least one attempt per endpoint, unless retries are off.
        self.max_attempts = (
            1 if policy.max_attempts == 1 else max(policy.max_attempts, self.n_endpoints)
        )
        self.attempt = 0
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout

    def remaining(self) -> float | None:
        """Seconds left for the next attempt (its gRPC deadline); None means no deadline."""
        if self._deadline is None:
            return None
        left = self._deadline - self._clock()
        if left <= 0:
            raise DeadlineExceededError(
                f"deadline of {self.timeout:g}s exceeded after {self.attempt} attempt(s)",
                status="DEADLINE_EXCEEDED",
            )
        return left

    def retry_delay(self, error: VisualEntailmentError) -> float:
        """Seconds to sleep before the next attempt, or raise `error` (or a deadline error)."""
        error.attempts = self.attempt + 1
        if (
            self._deadline is not None
            and self._clock() >= self._deadline
            and self.policy.is_retryable(error)
        ):
            # gRPC may report a call whose deadline ran out while connecting as
            # UNAVAILABLE; what the caller must hear is that its deadline passed.
            raise DeadlineExceededError(
                f"deadline of {self.timeout:g}s exceeded after {self.attempt + 1} attempt(s); "
                f"last error: {error}",
                status="DEADLINE_EXCEEDED",
            ) from error
        if not self.policy.is_retryable(error) or self.attempt + 1 >= self.max_attempts:
            raise error
        self.attempt += 1
        rounds, position = divmod(self.attempt, self.n_endpoints)
        delay = 0.0 if position else self.policy.backoff(rounds - 1)
        if self._deadline is not None and self._clock() + delay >= self._deadline:
            raise DeadlineExceededError(
                f"deadline of {self.timeout:g}s exceeded after {self.attempt} attempt(s); "
                f"last error: {error}",
                status="DEADLINE_EXCEEDED",
            ) from error
        return delay
