"""The value types every stage shares: a rate limit, a unit of work, a fetched answer, time.

A leaf module: it imports nothing of the harvester and nothing heavy, so that the job parser,
the planner, the sink and the readers of a dataset can all use these types without pulling in
aiohttp or pyarrow.
"""

from __future__ import annotations

import asyncio
import time
from calendar import monthrange
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

__all__ = [
    "GRANULARITIES",
    "Clock",
    "Fetched",
    "Fingerprint",
    "RateLimit",
    "Unit",
    "is_complete",
    "is_final",
    "period_end",
    "period_of",
    "system_clock",
]

GRANULARITIES = ("day", "week", "month", "range")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``calls`` calls in any ``seconds``-long sliding window."""

    calls: int
    seconds: float


class Unit(NamedTuple):
    """One call's worth of work: a collection and an inclusive window."""

    collection_hash: str
    start: date
    end: date

    def __str__(self) -> str:
        return f"{self.collection_hash} {self.start.isoformat()}..{self.end.isoformat()}"


class Fetched(NamedTuple):
    """One unit's validated answer, ready to be staged and written."""

    unit: Unit
    fetched_at: datetime  # timezone-aware, UTC
    impressions: int
    views: int
    time_spent: int
    downloads: int
    pages: tuple[tuple[int, int, int, int], ...]  # (page, views, clicks, time_spent) by page
    pages_requested: bool = True  # asked with includePageStats: no pages then means none came


class Fingerprint(NamedTuple):
    """What a partition file looked like when it was written or listed: size and mtime."""

    size: int
    mtime_ns: int


# The calendar period a range unit belongs to: a range has one per collection.
RANGE_PERIOD = date.min


def period_of(granularity: str, start: date) -> date:
    """The calendar period holding a window that starts on ``start``: the unit's identity.

    ``day``: the day; ``week``: its ISO week's Monday; ``month``: the month's first day;
    ``range``: one period per collection (:data:`RANGE_PERIOD`). A clipped week or month
    belongs to the same period whatever its clipped ends, so when it grows (or shrinks) the
    new window replaces the old one instead of standing beside it.
    """
    if granularity == "day":
        return start
    if granularity == "week":
        return start - timedelta(days=start.weekday())
    if granularity == "month":
        return start.replace(day=1)
    if granularity == "range":
        return RANGE_PERIOD
    raise ValueError(f"unknown granularity {granularity!r}")


def period_end(granularity: str, period: date) -> date | None:
    """The last day of a calendar period (None for ``range``, which has no calendar end)."""
    if granularity == "day":
        return period
    if granularity == "week":
        return period + timedelta(days=6)
    if granularity == "month":
        return period.replace(day=monthrange(period.year, period.month)[1])
    return None


def is_final(end: date, fetched_at: datetime) -> bool:
    """Whether an answer for a window ending on ``end`` is final: fetched on a later UTC day.

    The one rule, wherever finality is decided: when a result is staged, when the dataset's
    rows are read back (their ``fetched_at``), and when an old state is upgraded. An answer
    fetched while its window had not ended is *provisional*: later runs fetch it again.
    """
    return fetched_at.astimezone(UTC).date() > end


def is_complete(granularity: str, start: date, end: date) -> bool:
    """Whether the window ``start..end`` is its whole calendar period (a range always is).

    A window clipped by the job's dates (a rolling ``start: -30d``, an ``end: yesterday``
    inside the current week) is *partial*: the dataset marks it so (``complete`` false).
    """
    if granularity == "range":
        return True
    first = period_of(granularity, start)
    return start == first and end == period_end(granularity, first)


@dataclass(frozen=True)
class Clock:
    """Where a run takes its time from: wall time, a monotonic clock and a sleep.

    The limiter, the retry policy, the breaker and the pool all read this one object, so an
    end-to-end test can run a whole harvest on a fake clock.
    """

    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def today(self) -> date:
        """Today's date, UTC, by this clock."""
        return self.now().astimezone(UTC).date()


def system_clock() -> Clock:
    """The real clock."""
    return Clock()
