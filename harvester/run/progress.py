"""How far a run is: a live display on a terminal, plain progress lines everywhere else.

Both show the same figures: units done of those to fetch, calls per second, the time requests
were held back by the rate limiter, failures, and an ETA. The ETA is the longer of two
estimates: the pace so far, and the least time the rate limits allow for the calls left (so
it is honest at the start of a long backfill, before the pace has settled).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harvester.model import RateLimit
from harvester.pacing.limiter import format_duration, shortest_duration

__all__ = ["Progress", "Snapshot", "describe"]

log = logging.getLogger("harvester")

LIVE_REFRESH_SECONDS = 0.5


@dataclass(frozen=True)
class Snapshot:
    """The run's figures at one moment."""

    resolved: int  # units fetched, failed or skipped so far
    to_fetch: int  # units the run will fetch in all
    failed: int
    calls: int
    held_seconds: float  # wall-clock time requests were held back by the limiter
    elapsed: float


def eta_seconds(snap: Snapshot, limits: Sequence[RateLimit]) -> float:
    """Seconds left: the pace so far, never less than the rate limits allow."""
    left = max(0, snap.to_fetch - snap.resolved)
    floor, _ = shortest_duration(left, limits)
    if snap.resolved and snap.elapsed > 0:
        return max(floor, left / (snap.resolved / snap.elapsed))
    return floor


def describe(snap: Snapshot, limits: Sequence[RateLimit]) -> str:
    """One line of figures, plain text."""
    share = 100.0 * snap.resolved / snap.to_fetch if snap.to_fetch else 100.0
    rate = snap.calls / snap.elapsed if snap.elapsed > 0 else 0.0
    eta = "done" if snap.resolved >= snap.to_fetch else format_duration(eta_seconds(snap, limits))
    return (
        f"{snap.resolved:,}/{snap.to_fetch:,} units ({share:.1f} %), {snap.failed:,} failed;"
        f" {rate:.2f} calls/s; held back by the rate limit {format_duration(snap.held_seconds)};"
        f" ETA {eta}"
    )


class Progress:
    """Reports a run's progress until cancelled: live on a terminal, else a line every N s."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        limits: Sequence[RateLimit],
        *,
        every: float,
        live: bool,
    ) -> None:
        self._snapshot = snapshot
        self._limits = tuple(limits)
        self._every = every
        self._live = live

    async def run(self) -> None:
        """Report until cancelled."""
        if self._live:
            await self._run_live()
        else:
            while True:
                await asyncio.sleep(self._every)
                log.info("progress: %s", describe(self._snapshot(), self._limits))

    async def _run_live(self) -> None:
        """A rich live display on stderr; log lines print above it."""
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = Console(stderr=True)
        started = time.monotonic()
        with Live(console=console, refresh_per_second=4, redirect_stderr=True) as live:
            try:
                while True:
                    snap = self._snapshot()
                    live.update(Text(f"harvesting: {describe(snap, self._limits)}", style="bold"))
                    await asyncio.sleep(LIVE_REFRESH_SECONDS)
            finally:
                snap = self._snapshot()
                elapsed = format_duration(time.monotonic() - started)
                live.update(Text(f"harvested in {elapsed}: {describe(snap, self._limits)}"))
