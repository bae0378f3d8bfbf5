"""One rate budget per API key, whoever spends it: the processes of one host, or of many.

The API counts calls per key, not per process: a nightly run and a backfill on the same key
share its budget whether they know it or not. :class:`SharedBudget` keeps that budget in a
store every process using the key reads and writes atomically, behind the same interface the
paced session talks to as the in-process :class:`~harvester.pacing.limiter.RateLimiter` (the
:class:`Pacer` protocol): ``reserve`` at admission, ``astamp`` when the request goes out,
``afree`` when it never did, and ``pause`` after a 31/32 or 429 answer, for the whole key.

Two stores:

- on one host, with no setting at all, a small SQLite file in the user's runtime directory
  (``$XDG_RUNTIME_DIR``, else the cache directory; ``HARVESTER_BUDGET_DIR`` points elsewhere),
  named by a hash of base URL and key: never the key itself (:mod:`harvester.pacing.file_store`);
- across hosts, ``api.rate_budget: redis://…``: a sorted-set sliding log in Redis, stamped with
  Redis's own clock (:mod:`harvester.pacing.redis_store`).

A store keeps the send times of the last calls (the *starts*) and the *leases* of calls
admitted but not sent yet. A lease holds a place in every window, exactly as an unsent slot
does in the in-process limiter, and expires on its own (``lease_seconds``, past the request's
timeout) so that a process killed mid-request cannot hold a place forever. A waiter in another
process cannot be woken by an asyncio event: it sleeps until the moment the store says a call
fits, or at most :data:`POLL_SECONDS` while some lease, anywhere, may resolve sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence

from harvester.errors import BudgetUnavailable
from harvester.model import RateLimit
from harvester.pacing.file_store import FileStore
from harvester.pacing.limiter import DISTINCT_PAUSE_SECONDS, PacerState, RateLimiter
from harvester.pacing.protocol import (
    LEASE_SLACK_SECONDS,
    POLL_SECONDS,
    BudgetStore,
    Clock,
    Pacer,
    Sleep,
    budget_digest,
    budget_dir,
    windows_of,
)
from harvester.pacing.redis_store import RedisStore

__all__ = ["SharedBudget", "SharedSlot", "open_budget"]


class SharedSlot:
    """A lease in a shared store, resolved once: stamped when sent, or freed."""

    __slots__ = ("_budget", "_lease", "_state")

    def __init__(self, budget: SharedBudget, lease: str) -> None:
        self._budget = budget
        self._lease = lease
        self._state = "reserved"

    async def astamp(self) -> None:
        """Record the send in the store (before the headers go out: the call counts from now)."""
        if self._state == "reserved":
            self._state = "sent"
            await self._budget._stamp(self._lease)

    async def afree(self) -> None:
        """Drop the lease; a store that cannot be reached lets it lapse on its own."""
        if self._state == "reserved":
            self._state = "freed"
            await self._budget._free(self._lease)


class SharedBudget(PacerState):
    """A key's budget in a store shared with every process that spends the key.

    Within the process, waiters are served first come, first served (one asyncio lock); between
    processes, whoever asks the store first once a place frees. Counters as in
    :class:`~harvester.pacing.limiter.RateLimiter`, for this process's calls.
    """

    def __init__(
        self,
        store: BudgetStore,
        limits: Sequence[RateLimit],
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(limits, clock, sleep)  # _paused_until: this process's view
        self._store = store
        self._ready_at = -math.inf  # when the store last said a call may fit
        self._failure: BudgetUnavailable | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def reserve(self) -> SharedSlot:
        """Wait until the store admits a call; raise BudgetUnavailable if it cannot be asked."""
        arrived, holding, holds = self._clock(), self._holding, self._holds
        self._queued += 1
        try:
            async with self._lock:
                admitted = await self._admit()
                if holding or self._holds != holds:
                    self.waits += 1
                    self.waited_seconds += self._clock() - arrived
                self._unsent += 1
                return SharedSlot(self, admitted)
        finally:
            self._queued -= 1

    async def _admit(self) -> str:
        """Ask the store until it leases a place; sleep as it says between asks."""
        while True:
            if self._failure is not None:
                raise self._failure
            local = self._paused_until - self._clock()
            if local > 0:
                await self._hold(local)
                continue
            admitted = await self._store.reserve()
            if isinstance(admitted, str):
                self._ready_at = -math.inf
                return admitted
            delay, exact = admitted
            self._ready_at = self._clock() + delay
            await self._hold(delay if exact else min(delay, POLL_SECONDS))

    def admits_at(self) -> float:
        """This process's view: its pause, or when the store last said a call may fit while
        calls are still waiting for it."""
        waiting = self._ready_at if self._queued else -math.inf
        return max(self._paused_until, waiting)

    async def _hold(self, delay: float) -> None:
        """Sleep ``delay`` seconds (bounded by the callers), counting the time held."""
        self._holding = True
        self._holds += 1
        self.hold_meter.begin()
        try:
            await self._sleep(delay)
        finally:
            self._holding = False
            self.hold_meter.end()

    async def _stamp(self, lease: str) -> None:
        self._unsent -= 1
        self.calls += 1
        now = self._clock()
        for window in self._windows:  # this process's sends, for window_use()
            window.record(now)
        await self._store.stamp(lease)

    async def _free(self, lease: str) -> None:
        self._unsent -= 1
        with contextlib.suppress(BudgetUnavailable):  # the lease lapses on its own
            await self._store.free(lease)

    def pause(self, seconds: float) -> bool:
        """Pause the key here at once and, in the background, for every process sharing it.

        True when this is a new pause for this process (see RateLimiter.pause). A store that
        cannot be written fails the next reservation.
        """
        self.pauses += 1
        now = self._clock()
        until = now + seconds
        distinct = self._paused_until <= now or until >= self._paused_until + DISTINCT_PAUSE_SECONDS
        self._paused_until = max(self._paused_until, until)
        task = asyncio.ensure_future(self._publish_pause(seconds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return distinct

    async def _publish_pause(self, seconds: float) -> None:
        try:
            await self._store.pause(seconds)
        except BudgetUnavailable as exc:
            self._failure = exc

    def window_for_code(self, code: int | None) -> float:
        """The window a 31 (shortest) or 32 (longest) answer says was exceeded, in seconds."""
        if code == 32:
            return self.longest_window
        return min((limit.seconds for limit in self._limits), default=1.0)

    async def aclose(self) -> None:
        """Let pending pause writes land, then release the store."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._store.close()


async def open_budget(
    limits: Sequence[RateLimit],
    *,
    base_url: str,
    key: str,
    timeout_seconds: float,
    rate_budget: str | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> Pacer:
    """The key's budget: in Redis when ``rate_budget`` names it, else in the host's budget
    file; no limits need no sharing. Raises BudgetUnavailable (exit 2) when it cannot be used."""
    if not limits:
        return RateLimiter(limits, clock=clock, sleep=sleep)
    digest = budget_digest(base_url, key)
    lease = timeout_seconds + LEASE_SLACK_SECONDS
    store: BudgetStore
    if rate_budget is not None:
        store = await RedisStore.connect(rate_budget, digest, windows_of(limits), lease)
    else:
        store = FileStore(
            budget_dir() / f"{digest}.sqlite", windows_of(limits), lease_seconds=lease, clock=clock
        )
    return SharedBudget(store, limits, clock=clock, sleep=sleep)
