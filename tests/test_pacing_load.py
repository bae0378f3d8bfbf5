"""The interval rule under load, end to end: the simulator in its own process enforcing scaled
limits, behind a proxy that holds each request 0-250 ms (a server that reads its socket late);
in this process, the real paced session and client on a shared budget whose store is slowed by
20-80 ms per call, while a coroutine blocks the event loop 50-200 ms at random.

Every delay lands somewhere between a call's admission and the end of its attempt: a stall
between admission and send, a request that reaches the server late, an end recorded late, an
answer read late. Holding each call's place over that whole interval, no window overflows as
the simulator counts: zero answers 31/32. Counting a call from its send instead draws dozens
(``test_counting_from_the_send_overruns_under_the_same_load``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from harvester.errors import HarvesterError
from harvester.fetch.client import StatsClient
from harvester.fetch.session import make_session
from harvester.job.credentials import Credentials
from harvester.model import RateLimit, Unit
from harvester.pacing.file_store import FileStore
from harvester.pacing.protocol import Admission, BudgetStore, budget_digest, windows_of
from harvester.pacing.redis_store import RedisStore
from harvester.pacing.shared import SharedBudget
from harvester.simulator import SimulatorConfig, SimulatorProcess
from tests.conftest import API_KEY, API_SECRET
from tests.delay_proxy import DelayProxy
from tests.redis_server import RedisServer

LIMITS = (RateLimit(20, 1.0), RateLimit(100, 5.0))
LATENCY = (0.05, 0.3)
CALLS = 200  # the 100-call burst, then five periods of the 5 s window
WORKERS = 16
STALL = (0.05, 0.2)  # how long the loop is blocked, each time
STALL_EVERY = (0.0, 0.3)  # how long it runs between two stalls
STORE_DELAY = (0.01, 0.04)  # each way: 20-80 ms per store call
TIMEOUT = 5.0
HELD = (0.0, 0.25)  # what the proxy holds each request before the server reads it


class SlowStore:
    """A budget store whose every call takes ``delay`` seconds to reach it and as long to come
    back (a slow Redis, a busy disk)."""

    def __init__(self, inner: BudgetStore, rng: random.Random, delay: tuple[float, float]) -> None:
        self._inner = inner
        self._rng = rng
        self._delay_range = delay
        self.calls = 0

    async def _delay(self) -> None:
        if self._delay_range[1] > 0:
            await asyncio.sleep(self._rng.uniform(*self._delay_range))

    async def _slow(self, operation: Any, *args: Any) -> Any:
        self.calls += 1
        await self._delay()
        result = await operation(*args)
        await self._delay()
        return result

    async def reserve(self) -> Admission:
        result: Admission = await self._slow(self._inner.reserve)
        return result

    async def end(self, lease: str, grace: float = 0.0) -> None:
        await self._slow(self._inner.end, lease, grace)

    async def free(self, lease: str) -> None:
        await self._slow(self._inner.free, lease)

    async def pause(self, seconds: float) -> None:
        await self._slow(self._inner.pause, seconds)

    async def close(self) -> None:
        await self._inner.close()


async def _stall(rng: random.Random, stalls: list[float]) -> None:
    """Block the whole event loop now and then, as a CPU-bound callback or GC pause would."""
    while True:
        await asyncio.sleep(rng.uniform(*STALL_EVERY))
        blocked = rng.uniform(*STALL)
        time.sleep(blocked)  # on purpose: nothing else in this loop runs meanwhile
        stalls.append(blocked)


def _units(count: int) -> Iterator[Unit]:
    day = date(2026, 3, 1)
    for i in range(count):
        start = day + timedelta(days=i % 20)
        yield Unit(f"load{i // 20:04d}", start, start)


async def _harvest(
    base_url: str, store: BudgetStore, seed: int, *, slow_store: bool = True, naive: bool = False
) -> tuple[int, list[float], int]:
    """Fetch CALLS units through the paced session; (answers, stalls, store calls)."""
    rng = random.Random(seed)
    slow = SlowStore(store, rng, STORE_DELAY if slow_store else (0.0, 0.0))
    shared = SharedBudget(slow, LIMITS)
    budget: Any = CountedFromSend(shared) if naive else shared
    stalls: list[float] = []
    staller = asyncio.ensure_future(_stall(rng, stalls))
    answers = 0
    async with make_session(budget, timeout_seconds=TIMEOUT, concurrency=WORKERS) as session:
        client = StatsClient(
            session,
            base_url,
            Credentials(API_KEY, API_SECRET),
            page_stats=False,
            timeout_seconds=TIMEOUT,
        )
        units = _units(CALLS)

        async def worker() -> None:
            nonlocal answers
            for unit in units:
                with contextlib.suppress(HarvesterError):  # a 31/32 shows in the counters
                    await client.get_stats(unit)
                answers += 1

        try:
            await asyncio.gather(*(worker() for _ in range(WORKERS)))
        finally:
            staller.cancel()
    await shared.aclose()
    return answers, stalls, slow.calls


@pytest.fixture
def simulator_process() -> Iterator[SimulatorProcess]:
    config = SimulatorConfig(
        seed=3, keys={API_KEY: API_SECRET}, rate_limits=LIMITS, latency=LATENCY
    )
    with SimulatorProcess(config) as sim:
        yield sim


@pytest.fixture
def late_server(simulator_process: SimulatorProcess) -> Iterator[DelayProxy]:
    """The simulator as a server that reads each request 0-250 ms late."""
    parts = urlsplit(simulator_process.base_url)
    assert parts.hostname and parts.port
    with DelayProxy((parts.hostname, parts.port), HELD, seed=5) as proxy:
        yield proxy


class CountedFromSend:
    """The rule this one replaced, as a pacer: a call's place is given up when its request is
    sent, and its window counted from there (the end is recorded at once)."""

    def __init__(self, budget: SharedBudget) -> None:
        self._budget = budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._budget, name)

    async def reserve(self) -> Any:
        return _SendTicket(await self._budget.reserve())


class _SendTicket:
    def __init__(self, ticket: Any) -> None:
        self._ticket = ticket

    def mark_sent(self) -> None:
        self._ticket.mark_sent()
        self._ticket.end()

    def end(self, answered: bool = True) -> None:
        self._ticket.end(answered)


def _limit_answers(sim: SimulatorProcess) -> int:
    codes = sim.counters()["codes"]
    return int(codes.get("31", 0) + codes.get("32", 0))


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "slow_store"), [("file", True), ("redis", True), ("file", False)])
def test_stalls_and_a_slow_budget_store_never_overrun_a_window(
    kind: str,
    slow_store: bool,
    tmp_path: Path,
    simulator_process: SimulatorProcess,
    late_server: DelayProxy,
    request: pytest.FixtureRequest,
) -> None:
    async def go() -> tuple[int, list[float], int]:
        store: BudgetStore
        lease = TIMEOUT + 2.0
        if kind == "file":
            store = FileStore(tmp_path / "budget.sqlite", windows_of(LIMITS), lease_seconds=lease)
        else:
            redis_db: RedisServer = request.getfixturevalue("redis_db")
            digest = budget_digest(late_server.url(), API_KEY)
            from tests.test_shared_budget import _held_all_along

            await _held_all_along(redis_db.url, digest)
            store = await RedisStore.connect(redis_db.url, digest, windows_of(LIMITS), lease)
        return await _harvest(late_server.url(), store, seed=11, slow_store=slow_store)

    answers, stalls, store_calls = asyncio.run(go())
    assert answers == CALLS and simulator_process.counters()["requests"] >= CALLS
    assert _limit_answers(simulator_process) == 0, simulator_process.counters()["codes"]
    # What this test is about: the loop was really blocked, often, the store really slow, and
    # requests really reached the server late.
    assert len(stalls) >= 20 and sum(stalls) >= 2.0, (len(stalls), sum(stalls))
    assert store_calls >= 2 * CALLS
    assert len(late_server.held) >= CALLS and max(late_server.held) > 0.2


@pytest.mark.slow
def test_counting_from_the_send_overruns_under_the_same_load(
    tmp_path: Path, simulator_process: SimulatorProcess, late_server: DelayProxy
) -> None:
    async def go() -> tuple[int, list[float], int]:
        store = FileStore(tmp_path / "budget.sqlite", windows_of(LIMITS), lease_seconds=7.0)
        # A fast store: admissions come in bursts, as a window frees, and a burst's requests
        # reach the server spread over the proxy's holds.
        return await _harvest(late_server.url(), store, seed=11, slow_store=False, naive=True)

    answers, _, _ = asyncio.run(go())
    assert answers == CALLS
    assert _limit_answers(simulator_process) > 0  # the load above is enough to break it
