"""The one retry policy, built once from the job's settings out of tenacity's parts.

Transient errors (``UnitError.transient``) are retried with exponential backoff and jitter, up to
``retry.attempts`` per unit; permanent ones fail the unit at once; credential rejections and
cancellation are never retried. A run-wide :class:`CircuitBreaker` stops the run when every call
has failed for longer than ``retry.circuit_breaker_seconds``: the API is down, and spinning for
hours helps nobody. The same window bounds the waits the API asks for: a 429 whose Retry-After
reaches past it (counted from the last success) stops the run too, instead of sitting it out.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from harvester.errors import HttpError, RateLimited, UnitError
from harvester.job.model import RetrySettings

__all__ = ["CircuitBreaker", "backoff", "build_retrying", "is_transient"]

INITIAL_BACKOFF_SECONDS = 0.5
RATE_LIMITED_WAIT_SECONDS = 0.0  # the limiter's pause already holds the retry back


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed; the one place retry decisions are made."""
    return isinstance(exc, UnitError) and exc.transient


class CircuitBreaker:
    """Opens when every call has failed (transiently) for ``window`` seconds in a row.

    It also knows when the last success was (the run's start, before any), so that a wait the
    API asks for can be weighed against what is left of the window: :attr:`wait_allowed`.
    """

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._failing_since: float | None = None
        self._last_success = clock()

    def record_success(self) -> None:
        """An answer from a working API (any API code, even a permanent refusal)."""
        self._failing_since = None
        self._last_success = self._clock()

    def record_failure(self) -> None:
        """A transport failure, 5xx, garbage or maintenance answer."""
        if self._failing_since is None:
            self._failing_since = self._clock()

    @property
    def failing_for(self) -> float:
        """Seconds since the last success, while every call since has failed."""
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since

    @property
    def since_success(self) -> float:
        """Seconds since the last success (since the breaker was made, before any)."""
        return self._clock() - self._last_success

    @property
    def wait_allowed(self) -> float:
        """Seconds a wait may still last before the run has gone a whole window without a
        success (negative once it has)."""
        return self.window - self.since_success

    @property
    def is_open(self) -> bool:
        """True once failures have lasted the whole window."""
        return self._failing_since is not None and self.failing_for >= self.window


class _stop_when_open(stop_base):
    """Stop retrying once the run-wide breaker is open."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._breaker.is_open


class _wait_for_error(wait_base):
    """Backoff that honours Retry-After and leaves 31/32 pacing to the limiter."""

    def __init__(self, backoff: wait_base, cap: float) -> None:
        self._backoff = backoff
        self._cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RateLimited):
            return RATE_LIMITED_WAIT_SECONDS
        delay = min(float(self._backoff(retry_state)), self._cap)
        if isinstance(exc, HttpError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay


def backoff(settings: RetrySettings) -> wait_base:
    """Exponential backoff (0.5 s, 1 s, 2 s, ...) plus up to 0.5 s of jitter."""
    initial = min(INITIAL_BACKOFF_SECONDS, settings.max_backoff_seconds)
    return wait_exponential(multiplier=initial, max=settings.max_backoff_seconds) + wait_random(
        0, initial
    )


def build_retrying(
    settings: RetrySettings,
    breaker: CircuitBreaker,
    *,
    sleep: Callable[[float], Awaitable[None]],
) -> AsyncRetrying:
    """The per-unit policy: attempts | open breaker, per-error backoff, transient-only retries."""
    return AsyncRetrying(
        stop=stop_after_attempt(settings.attempts) | _stop_when_open(breaker),
        wait=_wait_for_error(backoff(settings), settings.max_backoff_seconds),
        retry=retry_if_exception(is_transient),
        sleep=sleep,
        reraise=True,
    )
