"""The multi-window sliding limiter shared by every worker of one API key.

Every configured window holds at once: a call may start only when, for each window, fewer than
``calls`` calls started in the last ``seconds`` (plus a small margin for the time a request
takes to reach the server). Unlike a counter reset every second, a sliding window never lets
2× the budget through across a boundary. Waiters are served first come, first served.

A call counts from the moment it is *sent*, not from its admission: between the two a new
connection may cost a TLS handshake, and a burst whose first calls sat in handshakes would
otherwise reach the server late, with the next burst on time, and overflow its window. So
:meth:`RateLimiter.reserve` admits a call and returns a :class:`Slot`; the slot is *stamped*
when the request goes out (its start time enters every window) or *freed* when it never went
out (connection refused, timeout, cancellation). While a slot is reserved but unsent it holds a
place in every window, as a call that may start at any moment: whatever the sends' delays, no
window, as the server measures it, holds more than ``calls``. A waiter held back only by such
places wakes when one is stamped or freed.

A 31/32 answer means someone else spends the same key: :meth:`RateLimiter.pause` holds every
worker back until the exceeded window has had time to drain.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harvester.model import RateLimit

__all__ = [
    "HoldMeter",
    "PacerState",
    "RateLimiter",
    "Slot",
    "WindowUse",
    "format_duration",
    "shortest_duration",
    "window_margin",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MIN_MARGIN_SECONDS = 0.05
MARGIN_FRACTION = 0.01
DISTINCT_PAUSE_SECONDS = 1.0  # a pause ending this much later than the current one is news


def window_margin(seconds: float) -> float:
    """Time added to a window: jitter between our clock and the server's arrival stamp."""
    return max(MIN_MARGIN_SECONDS, seconds * MARGIN_FRACTION)


class _Window:
    """The start times of the calls still inside one ``seconds``-long window (at most ``calls``)."""

    __slots__ = ("calls", "seconds", "starts")

    def __init__(self, limit: RateLimit, margin: float) -> None:
        self.calls = limit.calls
        self.seconds = limit.seconds + margin
        self.starts: deque[float] = deque(maxlen=limit.calls)

    def free_at(self, unsent: int) -> float:
        """The earliest time a new call fits, with ``unsent`` calls that may start any moment.

        The new call and the unsent ones need ``unsent + 1`` places: the window may hold at
        most ``calls - unsent - 1`` of its recorded starts, so the ``calls - unsent``-th most
        recent must have left it. Starts are recorded in time order, so that one is
        ``starts[-(calls - unsent)]``. Infinite when the unsent calls alone fill the window.
        """
        need = self.calls - unsent
        if need <= 0:
            return math.inf
        if len(self.starts) < need:
            return -math.inf
        return self.starts[-need] + self.seconds

    def record(self, now: float) -> None:
        """Count a call started at ``now``; forget the starts that have left the window.

        They can no longer hold a call back, and a generous limit (1,000,000 a second) would
        otherwise keep up to ``calls`` of them: memory growing with the run.
        """
        starts = self.starts
        starts.append(now)
        horizon = now - self.seconds
        while starts[0] <= horizon:
            starts.popleft()


@dataclass(frozen=True)
class WindowUse:
    """One window as it stands: its size (margin included) and the send times still in it."""

    calls: int
    seconds: float
    recent: tuple[float, ...]  # oldest first, on the pacer's clock


class HoldMeter:
    """Wall-clock time during which at least one call was held back, the current hold included.

    A pacer's meter may report to a ``parent`` (the run's): the parent counts the time at least
    one of its pacers held a call back, the union of their holds, so its figure never exceeds
    the run's duration however many accounts wait side by side.
    """

    def __init__(self, clock: Clock, parent: HoldMeter | None = None) -> None:
        self._clock = clock
        self.parent = parent
        self._holding = 0
        self._since = 0.0
        self._total = 0.0

    def begin(self) -> None:
        """A hold starts."""
        if self._holding == 0:
            self._since = self._clock()
        self._holding += 1
        if self.parent is not None:
            self.parent.begin()

    def end(self) -> None:
        """A hold ends."""
        self._holding -= 1
        if self._holding == 0:
            self._total += self._clock() - self._since
        if self.parent is not None:
            self.parent.end()

    @property
    def seconds(self) -> float:
        """The time held so far, a hold still going on included."""
        ongoing = self._clock() - self._since if self._holding else 0.0
        return self._total + ongoing


class Slot:
    """One admitted call's place in every window: stamp it when sent, free it if never sent.

    Both are idempotent and only the first of them counts: freeing a stamped slot does
    nothing (the call went out, the server counted it), so ``finally: slot.free()`` is safe.
    """

    __slots__ = ("_limiter", "_state")

    _RESERVED, _SENT, _FREED = "reserved", "sent", "freed"

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._state = Slot._RESERVED

    @property
    def sent(self) -> bool:
        """True once stamped: the call counts from its send in every window."""
        return self._state == Slot._SENT

    def stamp(self) -> None:
        """The request is going out now: its start enters every window."""
        if self._state == Slot._RESERVED:
            self._state = Slot._SENT
            self._limiter._stamped()

    def free(self) -> None:
        """The request never went out: give its place back (no-op once stamped)."""
        if self._state == Slot._RESERVED:
            self._state = Slot._FREED
            self._limiter._freed()

    async def astamp(self) -> None:
        """:meth:`stamp`, as the paced session calls every budget's slots."""
        self.stamp()

    async def afree(self) -> None:
        """:meth:`free`, as the paced session calls every budget's slots."""
        self.free()


class PacerState:
    """What every pacer keeps: its windows, its waiters' bookkeeping and its counters.

    Shared by :class:`RateLimiter` (one process) and the shared budget
    (:mod:`harvester.pacing.shared`).
    Counters: ``calls`` (stamped: sent on the wire), ``waits`` and ``waited_seconds`` (calls
    held back and their waits, summed over the calls: several workers wait at once),
    ``held_seconds`` (wall-clock time during which at least one call was held back, read from
    ``hold_meter`` while a hold lasts), ``pauses`` (31/32 and 429 answers that paused the key).
    """

    def __init__(self, limits: Sequence[RateLimit], clock: Clock, sleep: Sleep) -> None:
        self._limits = tuple(limits)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()  # FIFO: the first waiter is served first
        self._paused_until = -math.inf
        self._unsent = 0
        self._holding = False  # the first waiter is waiting: everyone behind it is held too
        self._holds = 0  # how many times it started waiting
        self._queued = 0  # calls waiting in reserve
        # This process's sends per window (the ETA reads them; RateLimiter admits by them).
        self._windows = [_Window(limit, window_margin(limit.seconds)) for limit in self._limits]
        self.hold_meter = HoldMeter(clock)
        self.calls = 0
        self.waits = 0
        self.waited_seconds = 0.0
        self.pauses = 0

    @property
    def held_seconds(self) -> float:
        """Wall-clock time during which at least one call was held back, so far."""
        return self.hold_meter.seconds

    def window_use(self) -> tuple[WindowUse, ...]:
        """Each window's size and the send times of this process's calls still inside it."""
        now = self._clock()
        return tuple(
            WindowUse(w.calls, w.seconds, tuple(t for t in w.starts if t > now - w.seconds))
            for w in self._windows
        )

    @property
    def waiting(self) -> int:
        """Calls asking for a place or holding one unsent: each is a send still to come."""
        return self._unsent + self._queued

    @property
    def enabled(self) -> bool:
        """False when no window is configured (limits off)."""
        return bool(self._limits)

    @property
    def longest_window(self) -> float:
        """The longest configured window in seconds (0 when limits are off)."""
        return max((limit.seconds for limit in self._limits), default=0.0)

    @property
    def unsent(self) -> int:
        """Calls reserved and neither stamped nor freed yet (this process's)."""
        return self._unsent


class RateLimiter(PacerState):
    """Admit calls so that every window holds; share one instance between a key's workers.

    Counters: see :class:`PacerState`.
    """

    def __init__(
        self,
        limits: Sequence[RateLimit],
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        margin: Callable[[float], float] = window_margin,
    ) -> None:
        super().__init__(limits, clock, sleep)
        self._windows = [_Window(limit, margin(limit.seconds)) for limit in self._limits]
        self._changed = asyncio.Event()  # a slot was stamped or freed

    async def acquire(self) -> None:
        """Wait until a call fits every window, then count it as sent now."""
        (await self.reserve()).stamp()

    async def reserve(self) -> Slot:
        """Wait until a call fits every window; its slot holds a place until stamped or freed."""
        if not self._windows:
            self._unsent += 1
            return Slot(self)
        arrived, holding, holds = self._clock(), self._holding, self._holds
        self._queued += 1
        try:
            async with self._lock:
                while True:
                    now = self._clock()
                    ready_at = max(
                        self._paused_until, *(w.free_at(self._unsent) for w in self._windows)
                    )
                    if ready_at <= now:
                        break
                    await self._hold(ready_at - now)
                if holding or self._holds != holds:
                    self.waits += 1
                    self.waited_seconds += now - arrived
                self._unsent += 1
                return Slot(self)
        finally:
            self._queued -= 1

    def admits_at(self) -> float:
        """When a call asking now would be admitted, behind those already waiting: the moment
        every window has room for them all (infinite when unsent calls fill one)."""
        if not self._windows:
            return -math.inf
        ahead = self._unsent + self._queued
        return max(self._paused_until, *(w.free_at(ahead) for w in self._windows))

    async def _hold(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if a slot is stamped or freed. ``delay`` is infinite
        when unsent slots alone fill a window; each resolves within its request's timeout."""
        self._holding = True
        self._holds += 1
        self.hold_meter.begin()
        try:
            if self._unsent == 0:
                # Only time makes room: no slot can resolve, none is reserved while we wait.
                await self._sleep(delay)
            else:
                await self._sleep_or_change(delay)
        finally:
            self._holding = False
            self.hold_meter.end()

    async def _sleep_or_change(self, delay: float) -> None:
        """Sleep ``delay`` or until a slot resolves, whichever comes first; sleep's errors rise."""
        self._changed.clear()
        changed = asyncio.ensure_future(self._changed.wait())
        waiting: set[asyncio.Future[Any]] = {changed}
        sleeper = None
        if math.isfinite(delay):
            sleeper = asyncio.ensure_future(self._sleep(delay))
            waiting.add(sleeper)
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waiting:
                future.cancel()
        if sleeper is not None and sleeper.done() and not sleeper.cancelled():
            sleeper.result()  # a stop token's sleep raises when the run stops

    def _stamped(self) -> None:
        now = self._clock()
        for window in self._windows:
            window.record(now)
        self.calls += 1
        self._unsent -= 1
        self._changed.set()

    def _freed(self) -> None:
        self._unsent -= 1
        self._changed.set()

    async def aclose(self) -> None:
        """Nothing to release: the limiter lives in this process alone."""

    def pause(self, seconds: float) -> bool:
        """Hold every worker back for ``seconds`` from now (extends, never shortens, a pause).

        True when this is a new pause, worth a warning: none was on, or it ends at least
        :data:`DISTINCT_PAUSE_SECONDS` after the one that was. Workers that hit the same
        answer together extend one pause by a few milliseconds, and say so once.
        """
        self.pauses += 1
        now = self._clock()
        until = now + seconds
        distinct = self._paused_until <= now or until >= self._paused_until + DISTINCT_PAUSE_SECONDS
        self._paused_until = max(self._paused_until, until)
        return distinct

    def window_for_code(self, code: int | None) -> float:
        """The window a 31 (shortest) or 32 (longest) answer says was exceeded, in seconds."""
        if not self._limits:
            return 1.0
        if code == 32:
            return self.longest_window
        return min(limit.seconds for limit in self._limits)


def shortest_duration(calls: int, limits: Sequence[RateLimit]) -> tuple[float, RateLimit | None]:
    """The least time ``calls`` calls can take under ``limits``, and the window that binds.

    Call k (from 0) can start no earlier than ``(k // limit.calls) * limit.seconds`` for every
    window, so the last one starts at the largest of those: that is the floor. No calls, or no
    windows, take no time.
    """
    best, binding = 0.0, None
    for limit in limits:
        seconds = ((calls - 1) // limit.calls) * limit.seconds if calls > 0 else 0.0
        if binding is None or seconds >= best:  # ties: the longer window reads better
            best, binding = seconds, limit
    return best, binding if calls > 0 else None


def format_duration(seconds: float) -> str:
    """``101 h 23 min``, ``4 min 10 s``, ``12 s``: coarse enough to read at a glance."""
    seconds = math.ceil(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
