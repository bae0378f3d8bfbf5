"""Which account's unit a free worker takes next.

The plan is one window-major stream for the whole job (:func:`harvester.plan.windows.iter_windows`);
:class:`Splitter` splits each of its batches by account, so every account has its own stream
of batches and the ledger closes a partition only once every account that had units in it has
handed them all out. :class:`Scheduler` is the iterator the worker pool pulls from: a free
worker takes the next unit of the account whose budget admits a call soonest, so a paused
account (its admission far ahead) never holds a worker while another account can go. An
account that was stopped (its credentials rejected, its API down) comes first: its units end
at once, without a call.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date
from typing import Generic, Protocol, TypeVar

from harvester.model import Unit

__all__ = ["Scheduler", "Splitter"]


class _Shares(Protocol):
    def share(self, start: date, streams: int) -> None: ...


class Splitter:
    """The job's batches, split into one stream of batches per account."""

    def __init__(
        self,
        batches: Iterable[list[Unit]],
        owner: Mapping[str, str],
        last_day: Mapping[str, date],
        ledger: _Shares,
    ) -> None:
        """``owner``: collection hash → account; ``last_day``: each account's last end (an
        account's stream ends once the plan has moved past it)."""
        self._batches = iter(batches)
        self._owner = owner
        self._last_day = last_day
        self._ledger = ledger
        self._queues: dict[str, deque[list[Unit]]] = {name: deque() for name in last_day}
        self._frontier = date.min  # the earliest start of the latest batch pulled
        self._done = False

    def stream(self, name: str) -> Iterator[list[Unit]]:
        """The batches of one account, lazily; pulls the job's plan only as far as needed."""
        queue = self._queues[name]
        while True:
            if queue:
                yield queue.popleft()
            elif self._done or self._frontier > self._last_day[name] or not self._pull():
                return

    def _pull(self) -> bool:
        """Split the next batch of the plan among the accounts' queues."""
        batch = next(self._batches, None)
        if batch is None:
            self._done = True
            return False
        parts: dict[str, list[Unit]] = {}
        for unit in batch:
            parts.setdefault(self._owner[unit.collection_hash], []).append(unit)
        sharing = Counter(start for part in parts.values() for start in {u.start for u in part})
        for start, streams in sharing.items():
            self._ledger.share(start, streams)
        for name, part in parts.items():
            self._queues[name].append(part)
        if batch:
            self._frontier = min(unit.start for unit in batch)
        return True


L = TypeVar("L")


class Scheduler(Generic[L]):
    """(lane, unit) pairs for the worker pool: the unit of the lane that can go soonest.

    ``soonest(lane)`` is when the lane's budget admits a call (minus infinity for a stopped
    lane, whose units end without one). The lanes are kept in the order they were last served,
    so among equals the one served least recently goes first: equal accounts take turns.
    """

    def __init__(
        self,
        lanes: Sequence[tuple[L, Iterator[Unit]]],
        soonest: Callable[[L], float],
    ) -> None:
        self._lanes = [_Entry(lane, units) for lane, units in lanes]
        self._soonest = soonest

    def __iter__(self) -> Scheduler[L]:
        return self

    def __next__(self) -> tuple[L, Unit]:
        lanes = self._lanes
        for entry in [e for e in lanes if e.peek is None]:
            entry.peek = next(entry.units, None)
            if entry.peek is None:
                lanes.remove(entry)
        if not lanes:
            raise StopIteration
        soonest = self._soonest
        chosen = min(lanes, key=lambda e: soonest(e.lane))  # the first of equals: least recent
        unit, chosen.peek = chosen.peek, None
        lanes.remove(chosen)
        lanes.append(chosen)
        assert unit is not None
        return chosen.lane, unit


class _Entry(Generic[L]):
    __slots__ = ("lane", "peek", "units")

    def __init__(self, lane: L, units: Iterator[Unit]) -> None:
        self.lane = lane
        self.units = units
        self.peek: Unit | None = None
