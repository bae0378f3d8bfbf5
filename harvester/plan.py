"""Job → a lazy stream of units (one collection × one window).

Units come out window-major (every collection's unit for the first window, then the next
window, ...), so that output partitions (keyed by ``period_start``) complete one after another
while a long run goes on. Nothing is materialised up front: planning ten years of 1,000
collections holds one window's worth of units at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import NamedTuple

from harvester.config import Job


class Unit(NamedTuple):
    """One call's worth of work: a collection and an inclusive window."""

    collection_hash: str
    start: date
    end: date

    def __str__(self) -> str:
        return f"{self.collection_hash} {self.start.isoformat()}..{self.end.isoformat()}"


def iter_units(job: Job) -> Iterator[Unit]:
    """Yield every unit of the job, window-major, lazily."""
    raise NotImplementedError


def count_units(job: Job) -> int:
    """How many units ``iter_units`` yields, computed without generating them."""
    raise NotImplementedError
