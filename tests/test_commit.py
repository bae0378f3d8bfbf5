"""Partition tracking: a partition is written only when every planned unit is resolved."""

from __future__ import annotations

from datetime import date

from harvester.commit import PartitionTracker
from harvester.plan import Unit

D1, D2 = date(2026, 1, 1), date(2026, 1, 2)


def _unit(h: str, d: date) -> Unit:
    return Unit(h, d, d)


def test_partition_completes_after_close_and_last_resolution() -> None:
    tracker = PartitionTracker()
    a, b = _unit("a", D1), _unit("b", D1)
    tracker.planned(a)
    tracker.planned(b)
    assert tracker.close([D1]) == []
    assert tracker.resolved(a) is None
    assert tracker.resolved(b) == D1


def test_partition_resolved_before_close_completes_at_close() -> None:
    tracker = PartitionTracker()
    a = _unit("a", D1)
    tracker.planned(a)
    assert tracker.resolved(a) is None  # more units of D1 might still be planned
    assert tracker.close([D1]) == [D1]


def test_partitions_are_independent() -> None:
    tracker = PartitionTracker()
    a1, a2 = _unit("a", D1), _unit("a", D2)
    tracker.planned(a1)
    tracker.close([D1])
    tracker.planned(a2)
    assert tracker.resolved(a2) is None
    assert tracker.resolved(a1) == D1
    assert tracker.close([D2]) == [D2]


def test_a_partition_with_nothing_planned_is_complete_at_once() -> None:
    assert PartitionTracker().close([D1, D2]) == [D1, D2]
