"""The pacing rule every pacer of a key follows, and the in-process sliding-window limiter.

**The rule.** A call holds a place in every window from its admission until its attempt ends
(its answer arrived, or it failed, timed out or was cancelled), and for one window after that
end. A window of ``N`` calls per ``W`` seconds admits a call at time ``r`` only when

    live(r) + #{ended calls whose end e > r - W'} < N,        W' = W + margin(W),

``live(r)`` being the calls admitted whose attempts have not ended. A call whose request never
went out (refused, a TLS handshake that failed, cancelled before its headers were written)
gives its place back at once: the server never saw it. A call that went out and got no answer
counts as ended :data:`UNANSWERED_GRACE_SECONDS` later than it did (its bytes may still reach
the server after we hung up).

**Why no window, as the server counts, ever holds more than N.** The server counts call ``j``
once, at a moment ``a_j`` with ``r_j <= a_j <= e_j``, ``e_j`` being the end we record: not
before its admission (its request leaves after that), not after its answer arrived (the
server answers after it counted). A request we gave up on is recorded a grace later; a lease
that lapses (its process died) is recorded when it lapses, past the request timeout by which
its answer had to start. Suppose the server counted ``N + 1`` calls within ``W`` of its
seconds. On our clock that span is shorter than ``W'``: ``margin(W)`` covers a clock-rate
difference of :data:`MARGIN_FRACTION` and :data:`MARGIN_SECONDS` of timestamp granularity.
Let ``k`` be the one of them admitted last. Admissions are serialised (one lock; one
transaction or script in a shared store), so every other one, ``j``, was admitted before
``k``, and at ``r_k`` it had either not ended (``j`` is live) or ended at ``e_j <= r_k``;
then ``e_j >= a_j > a_k - W' >= r_k - W'``, so it was among the ended calls of the window.
So ``N`` calls held a place at ``r_k`` and ``k`` was not admitted: a contradiction. Nothing
was assumed about the delays between admission, send, arrival and answer: an event-loop
stall, a slow budget store or a server that reads its socket late only make a call hold its
place longer. What the proof needs of an implementation: the end it records is read after
the attempt ended (never before), admissions see every earlier admission, and a place is
only given back for a request that never went out.

**What it costs.** Call ``k + N`` waits for call ``k``'s end, not its send: each period of
the binding window gives up one call's round trip, plus the margin. At 60/min with 50-300 ms
of latency, about 0.3 % of the budget, and 0.13 % for the margin.

A 31/32 answer means someone else spends the same key: :meth:`RateLimiter.pause` holds every
worker back until the exceeded window has had time to drain. Waiters are served first come,
first served. The shared budget (:mod:`harvester.pacing.shared`) keeps the same rule in a
store every process on the key uses.
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
    "UNANSWERED_GRACE_SECONDS",
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

MARGIN_SECONDS = 0.02  # the server's timestamp granularity, and our clock's reading
MARGIN_FRACTION = 0.001  # two clocks' rates differ by far less than 0.1 % (NTP: 0.01 %)
UNANSWERED_GRACE_SECONDS = 1.0  # a request we gave up on may still be in transit
DISTINCT_PAUSE_SECONDS = 1.0  # a pause ending this much later than the current one is news


def window_margin(seconds: float) -> float:
    """Time added to a window: clock rates and timestamp granularity (delays need none)."""
    return MARGIN_SECONDS + seconds * MARGIN_FRACTION


@dataclass(frozen=True)
class WindowUse:
    """One window as a pacer sees it now: what holds a place in it (for the operator's view).

    ``ended`` are the end times (on the pacer's clock, oldest first) of this process's calls
    still inside the window at ``at``; ``live`` the calls admitted whose attempts have not
    ended. A call fits when ``live + len(ended) < calls``; ``ended[i]`` leaves at
    ``ended[i] + seconds``.
    """

    calls: int
    seconds: float  # the window as enforced: its configured length plus the margin
    ended: tuple[float, ...]
    live: int
    at: float

    @property
    def recent(self) -> tuple[float, ...]:
        """The ends still holding a place (the live calls are counted as calls to come)."""
        return self.ended


class _Window:
    """The end times of the last calls of one ``seconds``-long window (at most ``calls``)."""

    __slots__ = ("calls", "ends", "seconds")

    def __init__(self, limit: RateLimit, margin: float) -> None:
        self.calls = limit.calls
        self.seconds = limit.seconds + margin
        self.ends: deque[float] = deque(maxlen=limit.calls)

    def free_at(self, live: int) -> float:
        """The earliest time a new call fits beside ``live`` calls that have not ended.

        The new call and the live ones need ``live + 1`` places: the window may hold at most
        ``calls - live - 1`` of its recorded ends, so the ``calls - live``-th most recent must
        have left it. Ends are recorded in time order, so that one is ``ends[-(calls - live)]``.
        Infinite when the live calls alone fill the window: only an end or a free makes room.
        """
        need = self.calls - live
        if need <= 0:
            return math.inf
        if len(self.ends) < need:
            return -math.inf
        return self.ends[-need] + self.seconds

    def record(self, at: float, now: float) -> None:
        """Count a call ended at ``at`` (``now``, or later for a grace end); forget the ends
        that have left the window by ``now``.

        An end earlier than the last one recorded (a grace end that runs ahead) is recorded
        as the last one: later is always safe, and the order keeps :meth:`free_at` exact.
        A generous limit (1,000,000 a second) would otherwise keep up to ``calls`` of them.
        """
        ends = self.ends
        if ends and at < ends[-1]:
            at = ends[-1]
        ends.append(at)
        horizon = now - self.seconds
        while ends[0] <= horizon:
            ends.popleft()

    def use(self, live: int, now: float) -> WindowUse:
        """What holds a place in this window at ``now``."""
        horizon = now - self.seconds
        ended = tuple(t for t in self.ends if t > horizon)
        return WindowUse(self.calls, self.seconds, ended, live, now)


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
    """One admitted call's place in every window, held until its attempt ends.

    :meth:`mark_sent` when its request's headers go out; :meth:`end` when the attempt is over,
    whatever its outcome: a sent call then counts from now in every window, an unsent one gives
    its place back. Only the first :meth:`end` counts, so ``finally: slot.end()`` is safe.
    """

    __slots__ = ("_limiter", "_sent", "_state")

    _LIVE, _ENDED = "live", "ended"

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._state = Slot._LIVE
        self._sent = False

    @property
    def sent(self) -> bool:
        """True once its request went out: its end will count in every window."""
        return self._sent

    @property
    def ended(self) -> bool:
        """True once its attempt ended."""
        return self._state == Slot._ENDED

    def mark_sent(self) -> None:
        """The request's headers are going out now (the server may count it from now on)."""
        if self._state == Slot._LIVE and not self._sent:
            self._sent = True
            self._limiter.calls += 1

    def end(self, answered: bool = True) -> None:
        """The attempt is over: count it from now if it went out, else give its place back."""
        if self._state == Slot._LIVE:
            self._state = Slot._ENDED
            grace = 0.0 if answered else UNANSWERED_GRACE_SECONDS
            self._limiter._ended(self._sent, grace)

    async def aend(self, answered: bool = True) -> None:
        """:meth:`end`, for callers that await every pacer's tickets alike."""
        self.end(answered)


class PacerState:
    """What every pacer keeps: its windows, its waiters' bookkeeping and its counters.

    Shared by :class:`RateLimiter` (one process; the windows decide) and the shared budget
    (:mod:`harvester.pacing.shared`; the store decides, the windows only report this process's
    calls). Counters: ``calls`` (sent on the wire), ``waits`` and ``waited_seconds`` (calls
    held back and their waits, summed over the calls: several workers wait at once),
    ``held_seconds`` (wall-clock time during which at least one call was held back, read from
    ``hold_meter`` while a hold lasts), ``pauses`` (31/32 and 429 answers that paused the key).
    """

    def __init__(
        self,
        limits: Sequence[RateLimit],
        clock: Clock,
        sleep: Sleep,
        margin: Callable[[float], float] = window_margin,
    ) -> None:
        self._limits = tuple(limits)
        self._clock = clock
        self._sleep = sleep
        self._windows = [_Window(limit, margin(limit.seconds)) for limit in self._limits]
        self._lock = asyncio.Lock()  # FIFO: the first waiter is served first
        self._paused_until = -math.inf
        self._live = 0
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

    @property
    def waiting(self) -> int:
        """Calls asking for a place or holding one (not ended): each is a call still to count."""
        return self._live + self._queued

    @property
    def enabled(self) -> bool:
        """False when no window is configured (limits off)."""
        return bool(self._limits)

    @property
    def longest_window(self) -> float:
        """The longest configured window in seconds (0 when limits are off)."""
        return max((limit.seconds for limit in self._limits), default=0.0)

    @property
    def live(self) -> int:
        """This process's calls admitted whose attempts have not ended yet."""
        return self._live

    def window_use(self) -> list[WindowUse]:
        """Per configured window, what holds a place in it now: this process's calls ended
        within it and its calls in flight (read-only; no store is asked)."""
        now = self._clock()
        return [window.use(self._live, now) for window in self._windows]

    def _record_end(self, grace: float) -> None:
        """Count one of this process's calls as ended now, plus ``grace``."""
        now = self._clock()
        for window in self._windows:
            window.record(now + grace, now)

    def _take_pause(self, seconds: float) -> bool:
        """Extend this process's pause; True when it is news (see RateLimiter.pause)."""
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
        super().__init__(limits, clock, sleep, margin)
        self._changed = asyncio.Event()  # a call ended or gave its place back

    async def acquire(self) -> None:
        """Wait until a call fits every window, then count an instantaneous call: sent and
        ended now (for callers that pace something other than an HTTP attempt)."""
        slot = await self.reserve()
        slot.mark_sent()
        slot.end()

    async def reserve(self) -> Slot:
        """Wait until a call fits every window; its slot holds a place until it ends."""
        if not self._windows:
            self._live += 1
            return Slot(self)
        arrived, holding, holds = self._clock(), self._holding, self._holds
        self._queued += 1
        try:
            async with self._lock:
                while True:
                    now = self._clock()
                    ready_at = max(
                        self._paused_until, *(w.free_at(self._live) for w in self._windows)
                    )
                    if ready_at <= now:
                        break
                    await self._hold(ready_at - now)
                if holding or self._holds != holds:
                    self.waits += 1
                    self.waited_seconds += now - arrived
                self._live += 1
                return Slot(self)
        finally:
            self._queued -= 1

    def admits_at(self) -> float:
        """When a call asking now would be admitted, behind those already waiting: the moment
        every window has room for them all (infinite when live calls fill one)."""
        if not self._windows:
            return -math.inf
        ahead = self._live + self._queued
        return max(self._paused_until, *(w.free_at(ahead) for w in self._windows))

    async def _hold(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if a call ends. ``delay`` is infinite when live
        calls alone fill a window; each ends within its request's timeout."""
        self._holding = True
        self._holds += 1
        self.hold_meter.begin()
        try:
            if self._live == 0:
                # Only time makes room: no call can end, none is admitted while we wait.
                await self._sleep(delay)
            else:
                await self._sleep_or_change(delay)
        finally:
            self._holding = False
            self.hold_meter.end()

    async def _sleep_or_change(self, delay: float) -> None:
        """Sleep ``delay`` or until a call ends, whichever comes first; sleep's errors rise."""
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

    def _ended(self, sent: bool, grace: float) -> None:
        if sent:
            self._record_end(grace)
        self._live -= 1
        self._changed.set()

    async def aclose(self) -> None:
        """Nothing to release: the limiter lives in this process alone."""

    def pause(self, seconds: float) -> bool:
        """Hold every worker back for ``seconds`` from now (extends, never shortens, a pause).

        True when this is a new pause, worth a warning: none was on, or it ends at least
        :data:`DISTINCT_PAUSE_SECONDS` after the one that was. Workers that hit the same
        answer together extend one pause by a few milliseconds, and say so once.
        """
        return self._take_pause(seconds)


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
