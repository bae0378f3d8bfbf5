"""Virtual time for asyncio tests: a clock that moves only when told, or when every task waits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class ManualTime:
    """A clock that moves only when told; sleepers wake when it reaches their deadline."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
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
