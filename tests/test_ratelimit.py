"""The sliding multi-window limiter, driven by a fake clock: instant and deterministic."""

from __future__ import annotations

import asyncio

import pytest

from harvester.config import RateLimit
from harvester.ratelimit import RateLimiter, window_margin


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _limiter(time: FakeTime, *limits: RateLimit) -> RateLimiter:
    return RateLimiter(limits, clock=time.clock, sleep=time.sleep)


async def _acquire_all(
    limiter: RateLimiter, time: FakeTime, calls: int, workers: int
) -> list[float]:
    starts: list[float] = []
    remaining = iter(range(calls))

    async def worker() -> None:
        for _ in remaining:
            await limiter.acquire()
            starts.append(time.now)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return starts


def _assert_windows_hold(starts: list[float], limits: tuple[RateLimit, ...]) -> None:
    """In any span shorter than a window, never more than its calls (a sliding check)."""
    for limit in limits:
        for i in range(len(starts) - limit.calls):
            assert starts[i + limit.calls] - starts[i] >= limit.seconds, (limit, i)


async def test_every_window_holds_under_concurrency() -> None:
    time = FakeTime()
    limits = (RateLimit(5, 1.0), RateLimit(60, 60.0))
    starts = await _acquire_all(_limiter(time, *limits), time, calls=150, workers=16)
    assert len(starts) == 150
    assert starts == sorted(starts)
    _assert_windows_hold(starts, limits)


async def test_no_double_burst_across_a_window_boundary() -> None:
    time = FakeTime()
    limiter = _limiter(time, RateLimit(10, 1.0))
    time.now = 0.9
    starts = await _acquire_all(limiter, time, calls=20, workers=4)
    # A per-second counter would let 10 in at 0.9 and 10 more at 1.0.
    in_first_second = [t for t in starts if t < 0.9 + 1.0]
    assert len(in_first_second) == 10


async def test_it_waits_no_longer_than_the_windows_need() -> None:
    time = FakeTime()
    limits = (RateLimit(5, 1.0), RateLimit(60, 60.0))
    starts = await _acquire_all(_limiter(time, *limits), time, calls=61, workers=8)
    short, long_ = window_margin(1.0), window_margin(60.0)
    assert starts[:5] == [0.0] * 5
    assert starts[5] == pytest.approx(1.0 + short)
    assert starts[59] == pytest.approx(11 * (1.0 + short))
    assert starts[60] == pytest.approx(60.0 + long_)


async def test_sustained_rate_is_the_binding_window() -> None:
    time = FakeTime()
    limits = (RateLimit(50, 1.0), RateLimit(300, 10.0))
    starts = await _acquire_all(_limiter(time, *limits), time, calls=3000, workers=32)
    _assert_windows_hold(starts, limits)
    # Whole periods of the binding window, so the bursts at either end don't skew the figure.
    rate = (2700 - 300) / (starts[2700] - starts[300])
    assert rate == pytest.approx(30.0, rel=0.015)  # 300 per 10 s, less the margin


async def test_pause_holds_every_worker_back() -> None:
    time = FakeTime()
    limiter = _limiter(time, RateLimit(100, 1.0))
    await limiter.acquire()
    assert limiter.pause_for_code(31) == 1.0
    starts = await _acquire_all(limiter, time, calls=3, workers=3)
    assert min(starts) >= 1.0
    assert limiter.pauses == 1


async def test_pause_for_32_waits_the_longest_window() -> None:
    time = FakeTime()
    limiter = _limiter(time, RateLimit(5, 1.0), RateLimit(60, 60.0))
    assert limiter.pause_for_code(32) == 60.0
    await limiter.acquire()
    assert time.now == pytest.approx(60.0)


async def test_no_limits_means_no_waiting() -> None:
    time = FakeTime()
    limiter = _limiter(time)
    await _acquire_all(limiter, time, calls=1000, workers=8)
    assert time.now == 0.0 and limiter.calls == 1000 and not limiter.enabled


async def test_wait_statistics_are_counted() -> None:
    time = FakeTime()
    limiter = _limiter(time, RateLimit(2, 1.0))
    await _acquire_all(limiter, time, calls=4, workers=1)
    assert limiter.waits == 1
    assert limiter.waited_seconds == pytest.approx(1.0 + window_margin(1.0))
