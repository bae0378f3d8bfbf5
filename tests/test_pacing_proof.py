"""The pacing rule's proof, checked: random delays between reserve, send, server arrival and
answer, on virtual time, and a checker that counts arrivals per sliding window as the server
does. Holding a place from admission to the attempt's end passes, in process and in a shared
budget file; counting a call from its send (the rule this one replaced) is shown to break.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from harvester.model import RateLimit
from harvester.pacing.file_store import FileStore
from harvester.pacing.limiter import RateLimiter
from harvester.pacing.protocol import windows_of
from harvester.pacing.shared import SharedBudget
from tests.virtual_time import ManualTime

LIMITS = (RateLimit(3, 1.0), RateLimit(5, 4.0))
WORKERS = 4
CALLS = 24
START = 1000.0  # well past "boot": a new budget file has no earlier boot to fear


@dataclass(frozen=True)
class Attempt:
    """One call's delays: admission to send, send to server arrival, arrival to answer."""

    to_send: float
    to_arrival: float
    to_answer: float
    sent: bool  # False: refused or cancelled before its headers went out


attempts = st.lists(
    st.builds(
        Attempt,
        to_send=st.floats(0.0, 0.4),  # a stalled loop, a slow store, a TLS handshake
        to_arrival=st.floats(0.0, 0.6),  # the network, a server reading its socket late
        to_answer=st.floats(0.0, 0.4),  # the server's work, the answer's way back
        sent=st.booleans() | st.just(True),
    ),
    min_size=CALLS,
    max_size=CALLS,
)


def overflows(arrivals: Sequence[float], limits: Sequence[RateLimit]) -> bool:
    """True when some window held more than its calls, counted as the server counts: an
    arrival is refused when ``calls`` arrivals are already in the ``seconds`` before it."""
    times = sorted(arrivals)
    return any(
        times[i + limit.calls] - times[i] < limit.seconds
        for limit in limits
        for i in range(len(times) - limit.calls)
    )


class _Ticket(Protocol):
    def mark_sent(self) -> None: ...
    def end(self, answered: bool = True) -> None: ...


class _Pacer(Protocol):
    async def reserve(self) -> Any: ...


class StampAtSend:
    """The rule this one replaced: a place is held from admission until the request is sent,
    and the call counts from its send, with a fixed margin of max(50 ms, 1 %)."""

    def __init__(self, limits: Sequence[RateLimit], time: ManualTime) -> None:
        self._windows = [
            (limit.calls, limit.seconds + max(0.05, limit.seconds * 0.01), deque[float]())
            for limit in limits
        ]
        self._time = time
        self._unsent = 0
        self._lock = asyncio.Lock()

    def _ready(self) -> float:
        ready = -math.inf
        for calls, seconds, starts in self._windows:
            need = calls - self._unsent
            if need <= 0:
                return math.inf
            if len(starts) >= need:
                ready = max(ready, starts[-need] + seconds)
        return ready

    async def reserve(self) -> _Ticket:
        async with self._lock:
            while (ready := self._ready()) > self._time.now:
                wait = ready - self._time.now
                await self._time.sleep(wait if math.isfinite(wait) else 0.01)
            self._unsent += 1
            return _NaiveTicket(self)


class _NaiveTicket:
    def __init__(self, pacer: StampAtSend) -> None:
        self._pacer = pacer
        self._open = True

    def mark_sent(self) -> None:  # stamped: counted from now, the place released
        if self._open:
            self._open = False
            self._pacer._unsent -= 1
            for _, _, starts in self._pacer._windows:
                starts.append(self._pacer._time.now)

    def end(self, answered: bool = True) -> None:
        if self._open:
            self._open = False
            self._pacer._unsent -= 1


async def _harvest(pacer: _Pacer, time: ManualTime, plan: Sequence[Attempt]) -> list[float]:
    """Workers spend the plan's attempts through ``pacer``; the server's arrival times."""
    arrivals: list[float] = []
    remaining = iter(plan)

    async def worker() -> None:
        for attempt in remaining:
            ticket = await pacer.reserve()
            await time.sleep(attempt.to_send)
            if not attempt.sent:
                ticket.end(answered=False)
                continue
            ticket.mark_sent()
            await time.sleep(attempt.to_arrival)
            arrivals.append(time.now)
            await time.sleep(attempt.to_answer)
            ticket.end()

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return arrivals


def _in_process(plan: Sequence[Attempt]) -> list[float]:
    async def go() -> list[float]:
        time = ManualTime(START)
        limiter = RateLimiter(LIMITS, clock=time.clock, sleep=time.sleep)
        return await time.run(_harvest(limiter, time, plan))

    return asyncio.run(go())


def _naive(plan: Sequence[Attempt]) -> list[float]:
    async def go() -> list[float]:
        time = ManualTime(START)
        return await time.run(_harvest(StampAtSend(LIMITS, time), time, plan))

    return asyncio.run(go())


def _two_processes_on_a_file(plan: Sequence[Attempt]) -> list[float]:
    """Two budgets on one file (as two processes would be), each with half the workers."""

    async def go(folder: Path) -> list[float]:
        time = ManualTime(START)
        budgets = [
            SharedBudget(
                FileStore(
                    folder / "budget.sqlite", windows_of(LIMITS), lease_seconds=30, clock=time.clock
                ),
                LIMITS,
                clock=time.clock,
                sleep=time.sleep,
            )
            for _ in range(2)
        ]
        half = len(plan) // 2
        arrivals = await time.run(
            asyncio.gather(
                _harvest(budgets[0], time, plan[:half]), _harvest(budgets[1], time, plan[half:])
            )
        )
        for budget in budgets:
            await time.run(budget.aclose())
        return [t for each in arrivals for t in each]

    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(go(Path(folder)))


@settings(max_examples=150, deadline=None)
@given(attempts)
def test_holding_a_place_until_the_answer_keeps_every_window_as_the_server_counts(
    plan: list[Attempt],
) -> None:
    arrivals = _in_process(plan)
    assert len(arrivals) == sum(a.sent for a in plan)
    assert not overflows(arrivals, LIMITS), sorted(arrivals)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attempts)
def test_a_shared_budget_file_keeps_the_same_rule_across_processes(plan: list[Attempt]) -> None:
    arrivals = _two_processes_on_a_file(plan)
    assert len(arrivals) == sum(a.sent for a in plan)
    assert not overflows(arrivals, LIMITS), sorted(arrivals)


def test_counting_a_call_from_its_send_overflows_a_window() -> None:
    """The checker catches the old rule: some delays put more arrivals in a window."""
    plan = find(
        attempts,
        lambda plan: overflows(_naive(plan), LIMITS),
        settings=settings(max_examples=500, deadline=None, database=None, phases=[Phase.generate]),
    )
    assert overflows(_naive(plan), LIMITS)
    assert not overflows(_in_process(plan), LIMITS)  # the same delays, the new rule: held


def test_the_checker_counts_as_the_server_does() -> None:
    limit = RateLimit(2, 1.0)
    assert not overflows([0.0, 0.5, 1.0, 1.5], [limit])  # exactly a window apart: allowed
    assert overflows([0.0, 0.5, 0.999], [limit])
    assert overflows([3.0, 0.0, 0.999, 0.5], [limit])  # order of recording does not matter
