"""One rate budget per API key, whoever spends it: the processes of one host, or of many.

The API counts calls per key, not per process: a nightly run and a backfill on the same key
share its budget whether they know it or not. :class:`SharedBudget` keeps that budget in a
store every process using the key reads and writes atomically, behind the same interface the
paced session talks to as the in-process :class:`~harvester.pacing.limiter.RateLimiter` (the
:class:`Pacer` protocol): ``reserve`` at admission, the ticket's ``end`` when the attempt is
over, and ``pause`` after a 31/32 or 429 answer, for the whole key.

Two stores:

- on one host, with no setting at all, a small SQLite file in the user's budget folder
  (``~/.cache/harvester/budget/``; ``HARVESTER_BUDGET_DIR`` points elsewhere), named by a hash
  of the canonical endpoint and the key: never the key itself (:mod:`harvester.pacing.file_store`);
- across hosts, ``api.rate_budget: redis://…``: a log in Redis, on Redis's own clock
  (:mod:`harvester.pacing.redis_store`).

Both keep the rule of :mod:`harvester.pacing.limiter`: a *lease* for every call admitted and
not ended (it holds a place in every window), and the *ends* of the last calls. A lease expires
on its own (``lease_seconds``, past the request's timeout) so that a process killed
mid-request cannot hold a place forever; it then counts as a call that ended when it lapsed.
A budget whose history may have been lost (a new file where one was before, a restarted Redis)
starts as if the window before had been spent in full. A waiter in another process cannot be
woken by an asyncio event: it sleeps until the moment the store says a call fits, or at most
:data:`POLL_SECONDS` while some call, anywhere, may give its place back sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence

from harvester.errors import BudgetUnavailable
from harvester.layout import BUDGET_FILE_SUFFIX
from harvester.model import RateLimit
from harvester.pacing.file_store import FileStore
from harvester.pacing.limiter import UNANSWERED_GRACE_SECONDS, PacerState, RateLimiter
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
    """A lease in a shared store, held until the attempt ends; then ended or freed, once."""

    __slots__ = ("_budget", "_done", "_lease", "_sent", "_write")

    def __init__(self, budget: SharedBudget, lease: str) -> None:
        self._budget = budget
        self._lease = lease
        self._sent = False
        self._done = False
        self._write: asyncio.Future[None] | None = None

    @property
    def sent(self) -> bool:
        """True once its request went out."""
        return self._sent

    def mark_sent(self) -> None:
        """The request is going out: nothing is written (the lease already holds its place)."""
        if not self._done and not self._sent:
            self._sent = True
            self._budget.calls += 1

    def end(self, answered: bool = True) -> None:
        """The attempt is over: count it in the store from now (or give its place back if it
        never went out), in the background; until that lands, the lease holds the place."""
        if not self._done:
            self._done = True
            grace = 0.0 if answered else UNANSWERED_GRACE_SECONDS
            self._write = self._budget._end(self._lease, self._sent, grace)

    async def aend(self, answered: bool = True) -> None:
        """:meth:`end`, and wait for the store to record it."""
        self.end(answered)
        if self._write is not None:
            await asyncio.shield(self._write)


class SharedBudget(PacerState):
    """A key's budget in a store shared with every process that spends the key.

    Within the process, waiters are served first come, first served (one asyncio lock); between
    processes, whoever asks the store first once a place frees. Counters as in
    :class:`~harvester.pacing.limiter.RateLimiter`, for this process's calls; its windows
    record this process's ends only, for :meth:`window_use` (the store decides).
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
        self._tasks: set[asyncio.Future[None]] = set()

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
                self._live += 1
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
        """This process's view: its pause, its own calls' places in every window (behind those
        already waiting), and when the store last said a call may fit while calls still wait
        for it. Other processes' calls can only make it later."""
        waiting = self._ready_at if self._queued else -math.inf
        ahead = self._live + self._queued
        return max(self._paused_until, waiting, *(w.free_at(ahead) for w in self._windows))

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

    def _end(self, lease: str, sent: bool, grace: float) -> asyncio.Future[None]:
        """Count the attempt here at once and, in the background, in the store."""
        self._live -= 1
        if sent:
            self._record_end(grace)
        task = asyncio.ensure_future(self._write_end(lease, sent, grace))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _write_end(self, lease: str, sent: bool, grace: float) -> None:
        # A store that cannot be reached lets the lease lapse on its own (counted when it
        # lapses, later than now: never too early); the next reservation says it failed.
        with contextlib.suppress(BudgetUnavailable):
            if sent:
                await self._store.end(lease, grace)
            else:
                await self._store.free(lease)

    def pause(self, seconds: float) -> bool:
        """Pause the key here at once and, in the background, for every process sharing it.

        True when this is a new pause for this process (see RateLimiter.pause). A store that
        cannot be written fails the next reservation.
        """
        distinct = self._take_pause(seconds)
        task = asyncio.ensure_future(self._publish_pause(seconds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return distinct

    async def _publish_pause(self, seconds: float) -> None:
        try:
            await self._store.pause(seconds)
        except BudgetUnavailable as exc:
            self._failure = exc

    async def settle(self) -> None:
        """Wait for every write this process has started (ends, frees, pauses)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Let pending writes land, then release the store."""
        await self.settle()
        await self._store.close()


async def open_budget(
    limits: Sequence[RateLimit],
    *,
    base_url: str,
    key: str,
    timeout_seconds: float,
    rate_budget: str | None = None,
    shared: bool = True,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> Pacer:
    """The key's budget: in Redis when ``rate_budget`` names it, else in the host's budget
    file. No limits, or ``shared=False`` (the bundled simulator this process started, which
    no other process talks to), need no sharing: an in-process limiter. Raises
    BudgetUnavailable (exit 2) when the budget cannot be used."""
    if not limits or not shared:
        return RateLimiter(limits, clock=clock, sleep=sleep)
    digest = budget_digest(base_url, key)
    lease = timeout_seconds + LEASE_SLACK_SECONDS
    store: BudgetStore
    if rate_budget is not None:
        store = await RedisStore.connect(rate_budget, digest, windows_of(limits), lease)
    else:
        store = FileStore(
            budget_dir() / f"{digest}{BUDGET_FILE_SUFFIX}",
            windows_of(limits),
            lease_seconds=lease,
            clock=clock,
        )
    return SharedBudget(store, limits, clock=clock, sleep=sleep)
