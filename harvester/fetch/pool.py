"""The asyncio worker pool: at most ``concurrency`` units in flight, fed lazily from the plan.

Workers pull the next unit only when they are free, so a plan of millions of units is never
materialised. :class:`StopToken` is how a stop (a signal, a fatal error) reaches every waiting
worker at once: sleeps made through it end early by raising :class:`Stopped`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["StopToken", "Stopped", "WorkerPool"]

T = TypeVar("T")


class Stopped(Exception):
    """A sleep was cut short because the run is stopping; the unit is left for the next run."""


class StopToken:
    """A run-wide stop flag whose :meth:`sleep` ends early when it is set.

    ``sleep`` is the run's clock's sleep (a fake one in tests); the loop's own by default.
    """

    def __init__(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._event = asyncio.Event()
        self._sleep = sleep
        self.reason: str | None = None

    @property
    def is_set(self) -> bool:
        """True once a stop was requested."""
        return self._event.is_set()

    def set(self, reason: str) -> None:
        """Request a stop; the first reason given is kept."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or raise :class:`Stopped` as soon as a stop is requested."""
        if self._event.is_set():
            raise Stopped(self.reason)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        if self._sleep is asyncio.sleep:
            try:
                await asyncio.wait_for(self._event.wait(), seconds)
            except TimeoutError:
                return
            raise Stopped(self.reason)
        await self._race(seconds)

    async def _race(self, seconds: float) -> None:
        """The clock's sleep against the stop event, whichever ends first."""
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        stopping = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait((sleeping, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            stopping.cancel()
        if self._event.is_set():
            raise Stopped(self.reason)


class WorkerPool(Generic[T]):
    """Run ``work`` over items from an iterator with at most ``concurrency`` at a time."""

    def __init__(self, concurrency: int, token: StopToken) -> None:
        self.concurrency = concurrency
        self._token = token
        self._tasks: list[asyncio.Task[None]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def run(self, items: Iterator[T], work: Callable[[T], Awaitable[None]]) -> None:
        """Return when the items are exhausted (or a stop was requested) and workers are idle.

        An exception raised by ``work`` stops the pool, cancels the other workers and is
        re-raised here.
        """
        self._tasks = [
            asyncio.create_task(self._worker(items, work)) for _ in range(self.concurrency)
        ]
        try:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            self.cancel()
            await asyncio.wait(self._tasks)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def cancel(self) -> None:
        """Cancel every worker now (in-flight requests are abandoned, not recorded)."""
        for task in self._tasks:
            task.cancel()

    async def _worker(self, items: Iterator[T], work: Callable[[T], Awaitable[None]]) -> None:
        """Take the next item while no stop is requested; at most one in flight per worker."""
        while not self._token.is_set:
            item = next(items, None)
            if item is None:
                return
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await work(item)
            finally:
                self.in_flight -= 1
