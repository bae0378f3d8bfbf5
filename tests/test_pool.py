"""The worker pool: bounded concurrency, lazy feeding, stopping, failing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from harvester.fetch.pool import Stopped, StopToken, WorkerPool


class Counting:
    """An iterator that counts how far it was consumed."""

    def __init__(self, n: int) -> None:
        self.n, self.taken = n, 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.taken += 1
            yield i


async def test_at_most_concurrency_in_flight_and_every_item_done() -> None:
    token = StopToken()
    pool: WorkerPool[int] = WorkerPool(4, token)
    done: list[int] = []
    active = [0]
    peak = [0]

    async def work(item: int) -> None:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        done.append(item)
        active[0] -= 1

    await pool.run(iter(range(100)), work)
    assert sorted(done) == list(range(100))
    assert peak[0] == 4 and pool.max_in_flight == 4


async def test_items_are_pulled_lazily() -> None:
    token = StopToken()
    pool: WorkerPool[int] = WorkerPool(3, token)
    source = Counting(1_000_000)
    seen: list[int] = []
    gate = asyncio.Event()

    async def work(item: int) -> None:
        seen.append(item)
        if len(seen) == 3:
            gate.set()
        await gate.wait()
        if len(seen) >= 10:
            token.set("enough")

    await pool.run(iter(source), work)
    assert source.taken <= 10 + 3


async def test_stop_token_stops_feeding_but_lets_work_finish() -> None:
    token = StopToken()
    pool: WorkerPool[int] = WorkerPool(2, token)
    finished: list[int] = []

    async def work(item: int) -> None:
        if item == 5:
            token.set("SIGTERM")
        await asyncio.sleep(0)
        finished.append(item)

    await pool.run(iter(range(100)), work)
    assert 5 in finished and len(finished) <= 8
    assert token.reason == "SIGTERM"


async def test_an_error_in_work_cancels_the_others_and_surfaces() -> None:
    token = StopToken()
    pool: WorkerPool[int] = WorkerPool(3, token)
    never = asyncio.Event()
    cancelled: list[int] = []

    async def work(item: int) -> None:
        if item == 2:
            raise RuntimeError("fatal")
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(item)
            raise

    with pytest.raises(RuntimeError, match="fatal"):
        await pool.run(iter(range(10)), work)
    assert sorted(cancelled) == [0, 1]


async def test_token_sleep_ends_early_on_stop() -> None:
    token = StopToken()

    async def stop_soon() -> None:
        await asyncio.sleep(0)
        token.set("SIGINT")

    task = asyncio.create_task(stop_soon())
    with pytest.raises(Stopped):
        await token.sleep(3600)
    await task
    with pytest.raises(Stopped):
        await token.sleep(0)
