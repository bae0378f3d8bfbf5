"""How far a run is: a live display on a terminal, plain progress lines everywhere else.

Both show the same figures: units done of those to fetch, calls per second, the share of the
run during which the rate limiter held requests back (the time a hold still lasts included),
failures, and an ETA. The ETA is the longer of two estimates: the pace so far, and the least
time the rate limits allow for the calls left (:func:`schedule_end`), which starts from the
calls already made in each window, so a window spent at the start of a backfill or a minute
ago counts. With several accounts each has its own budget and the slowest one sets it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from harvester.pacing.limiter import WindowUse, format_duration

__all__ = ["Progress", "Snapshot", "describe", "eta_seconds", "least_seconds", "schedule_end"]

log = logging.getLogger("harvester")

LIVE_REFRESH_SECONDS = 0.5
MAX_STEPS = 20_000  # calls scheduled one by one before the schedule's period (or a bound) is used
_SAME = 1e-6  # seconds: two gaps this close are the same gap


@dataclass(frozen=True)
class Snapshot:
    """The run's figures at one moment."""

    resolved: int  # units fetched, failed or skipped so far
    to_fetch: int  # units the run will fetch in all
    failed: int
    calls: int
    held_seconds: float  # wall-clock time at least one request was held back by a limiter
    elapsed: float
    floor_seconds: float = 0.0  # the least time the rate limits allow for the calls left

    @property
    def held_share(self) -> float:
        """The share of the run during which requests were held back (0 to 1)."""
        if self.elapsed <= 0:
            return 0.0
        return min(1.0, max(0.0, self.held_seconds / self.elapsed))


def schedule_end(calls: int, windows: Sequence[WindowUse], now: float) -> float:
    """When the last of ``calls`` calls can start at the earliest, every window holding.

    Each window of ``c`` calls per ``s`` seconds already holds the send times in its
    ``recent``: a new call can start once the call ``c`` places before it (sent, or still to
    come) is ``s`` seconds old. Calls are scheduled one by one, each as early as every window
    allows, which no order can beat. The recurrence only looks back a bounded number of calls,
    so once that look-back repeats itself shifted by a constant time (the schedule is periodic,
    as it is for the usual limits within a window or two) the rest follows exactly; past
    :data:`MAX_STEPS` without a period, each window's own chain of calls bounds the rest from
    below. ``now`` when there is nothing to send or no window.
    """
    if calls <= 0 or not windows:
        return now
    # Offsets from now keep the float sums small and exact enough to compare gaps.
    spans = [(w.calls, w.seconds) for w in windows]
    history = [
        sorted(t - now for t in w.recent if t > now - w.seconds)[-w.calls :] for w in windows
    ]
    look_back = max(c for c, _ in spans)
    times: list[float] = []
    periods = {c: [math.nan, 0] for c, _ in spans}  # period → [its gap, calls it held for]
    for j in range(min(calls, MAX_STEPS)):
        t = times[-1] if times else 0.0
        for (c, s), past in zip(spans, history, strict=True):
            i = j - c
            before = times[i] if i >= 0 else (past[i] if -i <= len(past) else -math.inf)
            t = max(t, before + s)
        times.append(t)
        for p, run in periods.items():
            if j < p:
                continue
            gap = t - times[j - p]
            run[:] = [gap, run[1] + 1] if abs(gap - run[0]) <= _SAME else [gap, 1]
            if run[1] >= look_back and j >= look_back + p - 1:
                return now + _repeat(times, calls - 1, p, gap)
    if calls <= len(times):
        return now + times[calls - 1]
    pairs = zip(spans, history, strict=True)
    return now + max(times[-1], *(_chain(times, past, calls - 1, *span) for span, past in pairs))


def _repeat(times: list[float], last: int, period: int, gap: float) -> float:
    """Call ``last`` of a schedule that repeats every ``period`` calls, ``gap`` seconds later."""
    j = len(times) - 1
    cycles = -(-(last - j) // period)  # ceil
    return times[last - cycles * period] + cycles * gap


def _chain(times: list[float], past: list[float], last: int, calls: int, seconds: float) -> float:
    """A floor for call ``last`` from one window alone: ``calls`` places later is ``seconds``
    later, back to a call already scheduled (or sent, or the earliest a missing one allows)."""
    j = len(times) - 1
    cycles = -(-(last - j) // calls)
    i = last - cycles * calls
    if i >= 0:
        return times[i] + cycles * seconds
    # Before the schedule: a send still in the window, or none (the window is free now).
    return (past[i] if -i <= len(past) else -seconds) + cycles * seconds


Budget = tuple[int, Sequence[Sequence[WindowUse]]]  # calls left, the windows of its pacers


def least_seconds(budgets: Iterable[Budget], now: float) -> float:
    """The least time the slowest budget needs: each is (calls left, its pacers' windows).

    Accounts on one key share its budget: their pacers' windows are one window each, holding
    every pacer's sends (pacers whose window sizes differ are each taken with every call left).
    """
    end = now
    for calls, uses in budgets:
        merged = _merged(uses)
        for windows in merged if merged is not None else uses:
            end = max(end, schedule_end(calls, windows, now))
    return end - now


def _merged(uses: Sequence[Sequence[WindowUse]]) -> list[tuple[WindowUse, ...]] | None:
    """The pacers' windows as one set (their sends together), or None when sizes differ."""
    if not uses:
        return []
    sizes = {tuple((w.calls, w.seconds) for w in windows) for windows in uses}
    if len(sizes) != 1:
        return None
    first = uses[0]
    return [
        tuple(
            WindowUse(
                w.calls, w.seconds, tuple(sorted(t for ws in uses for t in ws[i].recent)), 0, w.at
            )
            for i, w in enumerate(first)
        )
    ]


def eta_seconds(snap: Snapshot) -> float:
    """Seconds left: the pace so far, never less than the rate limits allow."""
    left = max(0, snap.to_fetch - snap.resolved)
    if snap.resolved and snap.elapsed > 0:
        return max(snap.floor_seconds, left / (snap.resolved / snap.elapsed))
    return snap.floor_seconds


def describe(snap: Snapshot) -> str:
    """One line of figures, plain text."""
    share = 100.0 * snap.resolved / snap.to_fetch if snap.to_fetch else 100.0
    rate = snap.calls / snap.elapsed if snap.elapsed > 0 else 0.0
    eta = "done" if snap.resolved >= snap.to_fetch else format_duration(eta_seconds(snap))
    held = f"{format_duration(snap.held_seconds)} ({100.0 * snap.held_share:.0f} % of the run)"
    return (
        f"{snap.resolved:,}/{snap.to_fetch:,} units ({share:.1f} %), {snap.failed:,} failed;"
        f" {rate:.2f} calls/s; held back by the rate limit {held}; ETA {eta}"
    )


class Progress:
    """Reports a run's progress until cancelled: live on a terminal, else a line every N s."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, every: float, live: bool) -> None:
        self._snapshot = snapshot
        self._every = every
        self._live = live

    async def run(self) -> None:
        """Report until cancelled."""
        if self._live:
            await self._run_live()
        else:
            while True:
                await asyncio.sleep(self._every)
                log.info("progress: %s", describe(self._snapshot()))

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
                    live.update(Text(f"harvesting: {describe(snap)}", style="bold"))
                    await asyncio.sleep(LIVE_REFRESH_SECONDS)
            finally:
                snap = self._snapshot()
                elapsed = format_duration(time.monotonic() - started)
                live.update(Text(f"harvested in {elapsed}: {describe(snap)}"))
