"""The one retry policy: what is retried, how long it waits, when it gives up."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harvester.errors import (
    ApiBusy,
    ApiRejected,
    BadResponse,
    CredentialsRejected,
    HttpError,
    InvalidPayload,
    NetworkError,
    RateLimited,
    RequestTimeout,
    UnitError,
)
from harvester.fetch.retry import CircuitBreaker, build_retrying, is_transient
from harvester.job.model import RetrySettings


class Recorder:
    """A sleep that records what it was asked to wait, and waits for nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _failing(errors: list[BaseException]) -> tuple[Callable[[], object], list[int]]:
    calls = [0]

    async def attempt() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return "ok"

    return attempt, calls


TRANSIENT = [
    lambda: NetworkError("reset"),
    lambda: RequestTimeout("slow"),
    lambda: HttpError("HTTP 502", status=502),
    lambda: HttpError("HTTP 429", status=429),
    lambda: BadResponse("truncated"),
    lambda: ApiBusy("code 22", code=22),
    lambda: ApiBusy("code 38", code=38),
    lambda: RateLimited("code 31", code=31),
]
PERMANENT = [
    lambda: ApiRejected("code 43", code=43),
    lambda: ApiRejected("code 46", code=46),
    lambda: ApiRejected("code 30", code=30),
    lambda: InvalidPayload("views: negative"),
]


@pytest.mark.parametrize("make", TRANSIENT)
async def test_each_transient_error_is_retried(make: Callable[[], UnitError]) -> None:
    attempt, calls = _failing([make(), make()])
    policy = build_retrying(RetrySettings(attempts=6), CircuitBreaker(600), sleep=Recorder())
    assert await policy(attempt) == "ok"
    assert calls[0] == 3


@pytest.mark.parametrize("make", PERMANENT)
async def test_permanent_errors_are_not_retried(make: Callable[[], UnitError]) -> None:
    attempt, calls = _failing([make()])
    policy = build_retrying(RetrySettings(attempts=6), CircuitBreaker(600), sleep=Recorder())
    with pytest.raises(UnitError):
        await policy(attempt)
    assert calls[0] == 1


async def test_credentials_are_never_retried() -> None:
    attempt, calls = _failing([CredentialsRejected(44)])
    policy = build_retrying(RetrySettings(), CircuitBreaker(600), sleep=Recorder())
    with pytest.raises(CredentialsRejected):
        await policy(attempt)
    assert calls[0] == 1


async def test_attempts_are_bounded_and_the_last_error_surfaces() -> None:
    attempt, calls = _failing([NetworkError(f"reset {i}") for i in range(10)])
    sleep = Recorder()
    policy = build_retrying(
        RetrySettings(attempts=4, max_backoff_seconds=3), CircuitBreaker(600), sleep=sleep
    )
    with pytest.raises(NetworkError, match="reset 3"):
        await policy(attempt)
    assert calls[0] == 4
    assert len(sleep.waits) == 3
    assert all(0 < w <= 3 for w in sleep.waits)
    assert sleep.waits[2] > sleep.waits[0]  # exponential


async def test_retry_after_is_honoured() -> None:
    attempt, _ = _failing([HttpError("HTTP 429", status=429, retry_after=7.5)])
    sleep = Recorder()
    policy = build_retrying(RetrySettings(max_backoff_seconds=1), CircuitBreaker(600), sleep=sleep)
    await policy(attempt)
    assert sleep.waits == [7.5]


async def test_rate_limit_answers_leave_the_pacing_to_the_limiter() -> None:
    attempt, _ = _failing([RateLimited("code 32", code=32)])
    sleep = Recorder()
    await build_retrying(RetrySettings(), CircuitBreaker(600), sleep=sleep)(attempt)
    assert sleep.waits == [0.0]


async def test_an_open_breaker_stops_retrying() -> None:
    now = [0.0]
    breaker = CircuitBreaker(10, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 11.0
    assert breaker.is_open
    attempt, calls = _failing([NetworkError("down")] * 5)
    with pytest.raises(NetworkError):
        await build_retrying(RetrySettings(attempts=6), breaker, sleep=Recorder())(attempt)
    assert calls[0] == 1


def test_breaker_closes_on_any_answer() -> None:
    now = [0.0]
    breaker = CircuitBreaker(10, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 5.0
    breaker.record_failure()
    assert breaker.failing_for == 5.0 and not breaker.is_open
    breaker.record_success()
    now[0] = 50.0
    assert not breaker.is_open and breaker.failing_for == 0.0


def test_is_transient_reads_the_mark() -> None:
    assert all(is_transient(make()) for make in TRANSIENT)
    assert not any(is_transient(make()) for make in PERMANENT)
    assert not is_transient(ValueError("x"))


def test_breaker_knows_how_long_a_wait_it_still_allows() -> None:
    now = [100.0]
    breaker = CircuitBreaker(10, clock=lambda: now[0])
    assert breaker.since_success == 0.0 and breaker.wait_allowed == 10.0  # from its making
    now[0] = 104.0
    breaker.record_failure()  # failures do not move the last success
    assert breaker.since_success == 4.0 and breaker.wait_allowed == 6.0
    breaker.record_success()
    now[0] = 105.0
    assert breaker.wait_allowed == 9.0
    now[0] = 130.0
    assert breaker.wait_allowed == -16.0  # a whole window without a success: no wait fits
