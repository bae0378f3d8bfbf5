"""The multi-window sliding limiter shared by every worker of one API key.

Every configured window holds at once: a call may start only when, for each window, fewer than
``calls`` calls started in the last ``seconds`` (plus a small margin for the time a request
takes to reach the server). Unlike a counter reset every second, a sliding window never lets
2× the budget through across a boundary. Waiters are served first come, first served.

A 31/32 answer means someone else spends the same key: :meth:`RateLimiter.pause` holds every
worker back until the exceeded window has had time to drain.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from harvester.model import RateLimit

__all__ = ["RateLimiter", "window_margin"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MIN_MARGIN_SECONDS = 0.05
MARGIN_FRACTION = 0.01


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

    def free_at(self) -> float:
        """The earliest time a new call fits this window."""
        if len(self.starts) < self.calls:
            return float("-inf")
        return self.starts[0] + self.seconds

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


class RateLimiter:
    """Admit calls so that every window holds; share one instance between a key's workers."""

    def __init__(
        self,
        limits: Sequence[RateLimit],
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        margin: Callable[[float], float] = window_margin,
    ) -> None:
        self._limits = tuple(limits)
        self._windows = [_Window(limit, margin(limit.seconds)) for limit in self._limits]
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._paused_until = float("-inf")
        self.calls = 0
        self.waits = 0
        self.waited_seconds = 0.0
        self.pauses = 0

    @property
    def enabled(self) -> bool:
        """False when no window is configured (limits off)."""
        return bool(self._windows)

    async def acquire(self) -> None:
        """Wait until a call fits every window, then count it as started now."""
        if not self._windows:
            self.calls += 1
            return
        async with self._lock:
            while True:
                now = self._clock()
                ready_at = max(self._paused_until, *(w.free_at() for w in self._windows))
                if ready_at <= now:
                    break
                self.waits += 1
                self.waited_seconds += ready_at - now
                await self._sleep(ready_at - now)
            for window in self._windows:
                window.record(now)
            self.calls += 1

    def pause(self, seconds: float) -> None:
        """Hold every worker back for ``seconds`` from now (extends, never shortens, a pause)."""
        self.pauses += 1
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def pause_for_code(self, code: int | None) -> float:
        """Pause for the window a 31 (shortest) or 32 (longest) answer says was exceeded."""
        if not self._limits:
            seconds = 1.0
        elif code == 32:
            seconds = max(limit.seconds for limit in self._limits)
        else:
            seconds = min(limit.seconds for limit in self._limits)
        self.pause(seconds)
        return seconds
