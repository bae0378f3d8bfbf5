"""The sliding multi-window limiter, driven by a fake clock: instant and deterministic."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest

from harvester.model import RateLimit
from harvester.pacing.limiter import UNANSWERED_GRACE_SECONDS, RateLimiter, window_margin
from tests.virtual_time import ManualTime, settle

T = TypeVar("T")


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
    assert limiter.window_for_code(31) == 1.0
    limiter.pause(1.0)
    starts = await _acquire_all(limiter, time, calls=3, workers=3)
    assert min(starts) >= 1.0
    assert limiter.pauses == 1


async def test_pause_for_32_waits_the_longest_window() -> None:
    time = FakeTime()
    limiter = _limiter(time, RateLimit(5, 1.0), RateLimit(60, 60.0))
    assert limiter.window_for_code(32) == 60.0
    limiter.pause(60.0)
    await limiter.acquire()
    assert time.now == pytest.approx(60.0)


async def test_a_pause_says_whether_it_is_news() -> None:
    time = FakeTime()
    limiter = _limiter(time, RateLimit(5, 1.0))
    assert limiter.pause(2.0)  # none was on
    time.now = 0.01
    assert not limiter.pause(2.0)  # another worker, the same answer: 10 ms longer
    assert limiter.pause(30.0)  # much longer than the pause that was on
    time.now = 40.0
    assert limiter.pause(0.05)  # the last one is over
    assert limiter.pauses == 4


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


# --- reserve, mark sent, end: a call holds its place until its attempt ends -----------------


def _manual(time: ManualTime, *limits: RateLimit) -> RateLimiter:
    return RateLimiter(limits, clock=time.clock, sleep=time.sleep)


async def test_a_live_slot_holds_its_place_until_it_ends() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(2, 1.0))
    first, second = await limiter.reserve(), await limiter.reserve()
    third = asyncio.ensure_future(limiter.reserve())
    await time.advance(60.0)  # time alone makes no room: the two may reach the server any moment
    assert not third.done() and limiter.live == 2
    first.end()  # that request never went out: its place comes back at once
    await settle()
    assert third.done() and time.now == 60.0  # woken by the end, not by a timer
    assert limiter.calls == 0 and limiter.live == 2
    second.mark_sent()
    second.end()
    (await third).end()
    assert limiter.calls == 1 and limiter.live == 0


async def test_a_sent_call_counts_from_its_end_not_its_send() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(2, 1.0))
    first, second = await limiter.reserve(), await limiter.reserve()
    third = asyncio.ensure_future(limiter.reserve())
    first.mark_sent()  # sent at 0; the server may count it any time until its answer
    await time.advance(0.5)
    assert not third.done()  # sent, not ended: it still holds its place
    first.end()  # the answer came at 0.5: the window runs from there
    await settle()
    assert not third.done()
    await time.advance(1.0 + window_margin(1.0) - 1e-9)
    assert not third.done()
    await time.advance(1e-9)
    assert third.done() and time.now == pytest.approx(1.5 + window_margin(1.0))
    second.end()
    (await third).end()


async def test_a_call_sent_and_never_answered_counts_a_grace_longer() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(1, 1.0))
    slot = await limiter.reserve()
    slot.mark_sent()
    slot.end(answered=False)  # timed out: its bytes may still reach the server
    later = asyncio.ensure_future(limiter.reserve())
    await time.run(later)
    assert time.now == pytest.approx(UNANSWERED_GRACE_SECONDS + 1.0 + window_margin(1.0))
    (await later).end()


async def test_mark_sent_and_end_count_once() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(3, 1.0))
    sent, unsent = await limiter.reserve(), await limiter.reserve()
    sent.mark_sent()
    sent.mark_sent()
    sent.end()
    sent.end()  # the request went out and ended: the server counted it, so does the window
    unsent.end()
    unsent.mark_sent()  # an ended slot cannot come back
    assert (sent.sent, unsent.sent) == (True, False)
    assert limiter.calls == 1 and limiter.live == 0
    starts = await _acquire_all(limiter, time, calls=2, workers=2)
    assert starts == [0.0, 0.0]  # one place taken, by the one sent call
    late = asyncio.ensure_future(limiter.acquire())
    await settle()
    assert not late.done()
    await time.advance(1.0 + window_margin(1.0))
    assert late.done()


async def test_waiters_stay_first_come_first_served_behind_live_slots() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(1, 1.0))
    slots = [await limiter.reserve()]
    order: list[int] = []

    async def waiter(i: int) -> None:
        slot = await limiter.reserve()
        order.append(i)
        slots.append(slot)

    waiters = [asyncio.ensure_future(waiter(i)) for i in range(4)]
    await settle()
    for _ in range(4):
        assert len(order) == len(slots) - 1
        slots[-1].end()  # never sent
        await settle()
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3] and time.now == 0.0


async def test_window_use_shows_the_calls_that_hold_a_place() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(3, 1.0), RateLimit(5, 10.0))
    done = await limiter.reserve()
    done.mark_sent()
    await time.advance(0.25)
    done.end()
    flying = await limiter.reserve()
    await time.advance(0.5)
    short, long_ = limiter.window_use()
    assert (short.calls, short.seconds) == (3, 1.0 + window_margin(1.0))
    assert short.ended == long_.ended == (0.25,) and short.live == long_.live == 1
    assert short.at == 0.75
    await time.advance(1.0)
    short, long_ = limiter.window_use()
    assert short.ended == () and long_.ended == (0.25,)  # left the second, not the ten
    flying.end()
    assert limiter.window_use()[0].live == 0


async def test_held_seconds_is_wall_clock_and_waited_seconds_sums_the_waiters() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(2, 1.0))
    starts: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        starts.append(time.now)

    await time.run(asyncio.gather(*(one() for _ in range(4))))
    free_at = 1.0 + window_margin(1.0)
    assert starts == [0.0, 0.0, pytest.approx(free_at), pytest.approx(free_at)]
    assert limiter.waits == 2
    assert limiter.waited_seconds == pytest.approx(2 * free_at)  # two callers, side by side
    assert limiter.held_seconds == pytest.approx(free_at)  # ...during the same 1.05 s


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(1, 1.0))
    blocker = await limiter.reserve()
    head = asyncio.ensure_future(limiter.reserve())
    behind = asyncio.ensure_future(limiter.reserve())
    await settle()
    head.cancel()
    await settle()
    assert head.cancelled() and not behind.done() and limiter.live == 1
    blocker.end()
    await settle()
    assert behind.done() and limiter.live == 1


async def test_a_stop_raised_by_sleep_ends_a_wait_beside_live_slots() -> None:
    class Stopped(Exception):
        pass

    async def stopping_sleep(seconds: float) -> None:
        await asyncio.sleep(0)
        raise Stopped

    time = ManualTime()
    limiter = RateLimiter([RateLimit(2, 1.0)], clock=time.clock, sleep=stopping_sleep)
    await limiter.acquire()
    live = await limiter.reserve()
    with pytest.raises(Stopped):
        await limiter.reserve()
    live.end()
    assert limiter.live == 0


async def test_memory_stays_bounded_with_a_generous_limit() -> None:
    time = FakeTime()
    limiter = _limiter(time, RateLimit(1_000_000, 1.0))
    for _ in range(20_000):
        await limiter.acquire()
        time.now += 0.001
    assert max(len(w.ends) for w in limiter._windows) <= 1_100
