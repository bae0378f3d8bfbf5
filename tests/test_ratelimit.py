"""The sliding multi-window limiter, driven by a fake clock: instant and deterministic."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from harvester.model import RateLimit
from harvester.pacing.limiter import RateLimiter, window_margin

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


# --- reserve, stamp, free: a call counts from when it is sent -------------------------------


class ManualTime:
    """A clock that moves only when told; sleepers wake when it reaches their deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, wake)
        self._sleepers.append(entry)
        try:
            await wake
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        """Move to ``now + seconds``, waking every sleeper due on the way, in order."""
        target = self.now + seconds
        while True:
            await settle()
            due = [s for s in self._sleepers if s[0] <= target and not s[1].done()]
            if not due:
                break
            self.now = max(self.now, min(when for when, _ in due))
            for when, wake in due:
                if when <= self.now:
                    wake.set_result(None)
        self.now = target
        await settle()

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, jumping to the next deadline whenever everything waits."""
        task = asyncio.ensure_future(awaitable)
        while not task.done():
            await settle()
            pending = [when for when, wake in self._sleepers if not wake.done()]
            if task.done():
                break
            assert pending, "deadlock: every task waits and no sleeper is due"
            await self.advance(min(pending) - self.now)
        return task.result()


async def settle() -> None:
    """Let every ready task run until it waits again."""
    for _ in range(20):
        await asyncio.sleep(0)


def _manual(time: ManualTime, *limits: RateLimit) -> RateLimiter:
    return RateLimiter(limits, clock=time.clock, sleep=time.sleep)


async def test_an_unsent_slot_holds_its_place_until_freed() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(2, 1.0))
    first, second = await limiter.reserve(), await limiter.reserve()
    third = asyncio.ensure_future(limiter.reserve())
    await time.advance(60.0)  # time alone makes no room: the two may start at any moment
    assert not third.done() and limiter.unsent == 2
    first.free()  # that request never went out
    await settle()
    assert third.done() and time.now == 60.0  # woken by the free, not by a timer
    assert limiter.calls == 0 and limiter.unsent == 2
    second.stamp()
    (await third).stamp()
    assert limiter.calls == 2 and limiter.unsent == 0


async def test_a_waiter_blocked_by_unsent_slots_wakes_when_one_is_stamped() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(2, 1.0))
    first, second = await limiter.reserve(), await limiter.reserve()
    third = asyncio.ensure_future(limiter.reserve())
    await time.advance(0.5)
    first.stamp()  # sent at 0.5: it now holds the window until 0.5 + 1 s (and the margin)
    await settle()
    assert not third.done()
    await time.advance(1.0 + window_margin(1.0) - 1e-9)
    assert not third.done()
    await time.advance(1e-9)
    assert third.done() and time.now == pytest.approx(1.5 + window_margin(1.0))
    second.free()
    (await third).free()


async def test_stamp_and_free_count_once() -> None:
    time = ManualTime()
    limiter = _manual(time, RateLimit(3, 1.0))
    sent, unsent = await limiter.reserve(), await limiter.reserve()
    sent.stamp()
    sent.stamp()
    sent.free()  # the request went out: the server counted it, so does the window
    unsent.free()
    unsent.stamp()  # a freed slot cannot come back
    assert (sent.sent, unsent.sent) == (True, False)
    assert limiter.calls == 1 and limiter.unsent == 0
    starts = await _acquire_all(limiter, time, calls=2, workers=2)
    assert starts == [0.0, 0.0]  # one place taken, by the one sent call
    late = asyncio.ensure_future(limiter.acquire())
    await settle()
    assert not late.done()
    await time.advance(1.0 + window_margin(1.0))
    assert late.done()


async def test_waiters_stay_first_come_first_served_behind_unsent_slots() -> None:
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
        slots[-1].free()
        await settle()
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3] and time.now == 0.0


async def test_late_out_of_order_stamps_hold_every_window_as_the_server_counts() -> None:
    """Workers whose sends lag their admission by up to 300 ms (a TLS handshake), some never
    sent at all: in the stamps, as the server sees arrivals, no window overflows."""
    time = ManualTime()
    limits = (RateLimit(5, 1.0), RateLimit(30, 10.0))
    limiter = _manual(time, *limits)
    rng = random.Random(3)
    remaining = iter(range(240))
    sent: list[float] = []
    admitted_then_sent: list[tuple[float, float]] = []

    async def worker() -> None:
        for _ in remaining:
            slot = await limiter.reserve()
            admitted = time.now
            await time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.3)]))
            if rng.random() < 0.15:
                slot.free()  # refused, timed out or cancelled before the headers went out
            else:
                slot.stamp()
                sent.append(time.now)
                admitted_then_sent.append((admitted, time.now))
            await time.sleep(rng.uniform(0.0, 0.05))  # the answer

    await time.run(asyncio.gather(*(worker() for _ in range(8))))
    assert sent == sorted(sent) and len(sent) == limiter.calls > 150
    assert limiter.unsent == 0
    _assert_windows_hold(sent, limits)
    # What this test is about: sends lag admissions, and overtake each other.
    by_admission = [s for _, s in sorted(admitted_then_sent)]
    assert by_admission != sorted(by_admission)
    # The limiter did not idle either: 30 per 10 s (and the margin) is the sustained pace.
    rate = (len(sent) - 30) / (sent[-1] - sent[29])
    assert rate > 30 / 10.1 * 0.85, rate


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
    assert head.cancelled() and not behind.done() and limiter.unsent == 1
    blocker.free()
    await settle()
    assert behind.done() and limiter.unsent == 1


async def test_a_stop_raised_by_sleep_ends_a_wait_beside_unsent_slots() -> None:
    class Stopped(Exception):
        pass

    async def stopping_sleep(seconds: float) -> None:
        await asyncio.sleep(0)
        raise Stopped

    time = ManualTime()
    limiter = RateLimiter([RateLimit(2, 1.0)], clock=time.clock, sleep=stopping_sleep)
    (await limiter.reserve()).stamp()
    unsent = await limiter.reserve()
    with pytest.raises(Stopped):
        await limiter.reserve()
    unsent.free()
    assert limiter.unsent == 0


async def test_memory_stays_bounded_with_a_generous_limit() -> None:
    time = FakeTime()
    limiter = _limiter(time, RateLimit(1_000_000, 1.0))
    for _ in range(20_000):
        await limiter.acquire()
        time.now += 0.001
    assert max(len(w.starts) for w in limiter._windows) <= 1_100
