"""The ledger: what the plan filter hands out, and when a partition is complete."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest

from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import PartitionWrite, WriteResult
from harvester.model import Clock, Fetched, Unit
from harvester.run.commit import Committer, Ledger, Quarantine, Rules
from harvester.state.store import StateStore

D1, D2, D3 = date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)
TODAY = date(2026, 2, 1)

AT = datetime(2026, 2, 1, 12, tzinfo=UTC)


def _unit(h: str, d: date, end: date | None = None) -> Unit:
    return Unit(h, d, end or d)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state.sqlite", granularity="day") as s:
        yield s


def _done(
    store: StateStore, units: list[Unit], *, fetched_on: date = TODAY, pages: bool = True
) -> None:
    """Record ``units`` as written, fetched at noon (UTC) on ``fetched_on``."""
    at = datetime.combine(fetched_on, time(12), UTC)
    store.stage([Fetched(u, at, 1, 2, 3, 4, (), pages) for u in units])
    store.mark_done(units)


def test_partition_completes_when_its_batch_closed_and_its_last_unit_resolved(
    store: StateStore,
) -> None:
    ledger = Ledger(store, Rules(TODAY), set())
    a, b = _unit("a", D1), _unit("b", D1)
    units = ledger.pending([[a, b]])
    assert [next(units), next(units)] == [a, b]
    ledger.resolved(a)
    assert ledger.take_ready() == []  # the batch is not closed yet: more might come
    ledger.resolved(b)
    assert ledger.take_ready() == []
    assert next(units, None) is None  # closes D1's batch
    assert ledger.take_ready() == [D1]


def test_partitions_are_independent(store: StateStore) -> None:
    ledger = Ledger(store, Rules(TODAY), set())
    a1, a2 = _unit("a", D1), _unit("a", D2)
    units = ledger.pending([[a1], [a2]])
    assert next(units) == a1
    assert next(units) == a2  # D1's batch closed, a1 still out
    ledger.resolved(a2)
    assert ledger.take_ready() == []
    ledger.resolved(a1)
    assert ledger.take_ready() == [D1]
    assert next(units, None) is None
    assert ledger.take_ready() == [D2]


def test_a_batch_with_nothing_to_fetch_is_complete_at_once(store: StateStore) -> None:
    _done(store, [_unit("a", D1)])
    ledger = Ledger(store, Rules(TODAY), set())
    assert list(ledger.pending([[_unit("a", D1)], [_unit("a", D2)]])) == [_unit("a", D2)]
    assert ledger.take_ready() == [D1]
    assert ledger.counts.already_done == 1 and ledger.counts.to_fetch == 1


def test_windows_after_today_are_neither_handed_out_nor_counted_as_work(
    store: StateStore,
) -> None:
    ledger = Ledger(store, Rules(D2), set())
    assert list(ledger.pending([[_unit("a", d)] for d in (D1, D2, D3)])) == [
        _unit("a", D1),
        _unit("a", D2),
    ]
    assert ledger.counts.not_begun == 1 and ledger.counts.to_fetch == 2


def test_a_provisional_unit_is_fetched_again_until_fetched_after_its_end(
    store: StateStore,
) -> None:
    _done(store, [_unit("a", D1)], fetched_on=D1)  # fetched on the day itself: provisional
    ledger = Ledger(store, Rules(D2), set())
    assert list(ledger.pending([[_unit("a", D1)]])) == [_unit("a", D1)]
    assert ledger.counts.provisional == 1
    _done(store, [_unit("a", D1)], fetched_on=D2)  # fetched after its end: final
    ledger = Ledger(store, Rules(D3), set())
    assert list(ledger.pending([[_unit("a", D1)]])) == []


def test_a_period_whose_window_changed_is_fetched_again(tmp_path: Path) -> None:
    monday = date(2026, 1, 5)
    with StateStore(tmp_path / "week.sqlite", granularity="week") as store:
        _done(store, [_unit("a", monday, date(2026, 1, 6))])  # clipped to Tuesday
        ledger = Ledger(store, Rules(TODAY), set())
        grown = _unit("a", monday, date(2026, 1, 7))
        assert list(ledger.pending([[grown]])) == [grown]
        assert ledger.counts.changed == 1


def test_units_written_without_pages_are_fetched_again_when_pages_are_wanted(
    store: StateStore,
) -> None:
    _done(store, [_unit("a", D1)], pages=False)
    assert (
        list(Ledger(store, Rules(TODAY, page_stats=False), set()).pending([[_unit("a", D1)]])) == []
    )
    assert list(
        Ledger(store, Rules(TODAY, page_stats=True), set()).pending([[_unit("a", D1)]])
    ) == [_unit("a", D1)]


def test_gone_collections_are_skipped_unless_retried(store: StateStore) -> None:
    batch = [_unit("a", D1), _unit("g", D1)]
    ledger = Ledger(store, Rules(TODAY), {"g"})
    assert list(ledger.pending([batch])) == [_unit("a", D1)]
    assert ledger.counts.gone == 1
    retry = Ledger(store, Rules(TODAY, retry_gone=True), {"g"})
    assert list(retry.pending([batch])) == batch


def test_refresh_fetches_done_units_ending_on_or_after_its_date(store: StateStore) -> None:
    _done(store, [_unit("a", D1), _unit("a", D2)])
    ledger = Ledger(store, Rules(TODAY, refresh_from=D2), set())
    assert list(ledger.pending([[_unit("a", D1)], [_unit("a", D2)]])) == [_unit("a", D2)]


# --- done: a stored final window that covers the planned one ----------------------------------

MONDAY, WEDNESDAY, SUNDAY = date(2026, 1, 5), date(2026, 1, 7), date(2026, 1, 11)


@pytest.fixture
def weekly(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "week.sqlite", granularity="week") as s:
        yield s


def test_a_start_that_moves_later_leaves_a_finished_week_as_it_is_stored(
    weekly: StateStore,
) -> None:
    _done(weekly, [_unit("a", MONDAY, SUNDAY)])  # fetched after the week: final
    ledger = Ledger(weekly, Rules(TODAY, granularity="week"), set())
    assert list(ledger.pending([[_unit("a", WEDNESDAY, SUNDAY)]])) == []
    assert ledger.counts.already_done == 1 and ledger.counts.changed == 0
    assert ledger.take_ready() == [WEDNESDAY]  # nothing handed out: complete at once


def test_a_provisional_period_is_fetched_again_over_its_whole_stored_window(
    weekly: StateStore,
) -> None:
    _done(weekly, [_unit("a", MONDAY, SUNDAY)], fetched_on=WEDNESDAY)  # not over: provisional
    ledger = Ledger(weekly, Rules(TODAY, granularity="week"), set())
    units = ledger.pending([[_unit("a", WEDNESDAY, SUNDAY)]])
    whole = _unit("a", MONDAY, SUNDAY)
    assert next(units) == whole  # not clipped to the new start: a stored window never shrinks
    assert next(units, None) is None
    assert ledger.counts.provisional == 1 and ledger.counts.changed == 0
    ledger.resolved(whole)
    assert sorted(ledger.take_ready()) == [MONDAY, WEDNESDAY]  # its partition, and the planned


def test_a_window_that_grows_is_fetched_again_over_both_windows(weekly: StateStore) -> None:
    _done(weekly, [_unit("a", WEDNESDAY, SUNDAY)])  # clipped at its start by the job then
    ledger = Ledger(weekly, Rules(TODAY, granularity="week"), set())
    grown = _unit("a", MONDAY, SUNDAY)
    assert list(ledger.pending([[grown]])) == [grown]
    assert ledger.counts.changed == 1
    # Grown at one end and clipped at the other: the union, never less than was stored.
    ledger = Ledger(weekly, Rules(TODAY, granularity="week"), set())
    assert list(ledger.pending([[_unit("a", MONDAY, date(2026, 1, 9))]])) == [grown]


def test_a_refresh_of_everything_keeps_stored_windows_whole(weekly: StateStore) -> None:
    _done(weekly, [_unit("a", MONDAY, SUNDAY)])
    ledger = Ledger(weekly, Rules(TODAY, refresh_from=date.min, granularity="week"), set())
    assert list(ledger.pending([[_unit("a", WEDNESDAY, SUNDAY)]])) == [_unit("a", MONDAY, SUNDAY)]


# --- the committer's batches ----------------------------------------------------------------


class RecordingSink(ParquetSink):
    """A Parquet sink that gathers ``batch_partitions`` partitions or ``batch_seconds`` of them
    per write, as Delta does, and records each write's partitions."""

    batch_partitions = 3
    batch_seconds = 30.0

    def __init__(self, output: Path) -> None:
        super().__init__(output)
        self.writes: list[list[date]] = []

    def write_partitions(self, writes: Sequence[PartitionWrite]) -> WriteResult:
        self.writes.append([w.period_start for w in writes])
        return super().write_partitions(writes)


class VirtualClock:
    """Monotonic time that moves only when a sleeper's time is up (``advance``)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for at, future in list(self._sleepers):
            if at <= self.now and not future.done():
                future.set_result(None)

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now, sleep=self.sleep)


async def _settle(committer: Committer, sink: RecordingSink, writes: int) -> None:
    """Let the writer take everything queued, then wait for its ``writes``-th write (the
    writes run on a thread)."""
    for _ in range(500):
        await asyncio.sleep(0.01)
        if committer.idle and len(sink.writes) >= writes:
            return
    raise AssertionError(f"{len(sink.writes)} writes, expected {writes}")


async def test_complete_partitions_are_written_in_batches_by_count_or_by_time(
    tmp_path: Path, store: StateStore
) -> None:
    days = [date(2026, 1, d) for d in range(1, 6)]
    units = [_unit("a", d) for d in days]
    ledger = Ledger(store, Rules(TODAY), set())
    sink = RecordingSink(tmp_path / "out")
    time = VirtualClock()
    committer = Committer(
        store, sink, ledger, Quarantine(tmp_path / "q"), Rules(TODAY), set(), clock=time.clock()
    )
    pending = ledger.pending([[u] for u in units])
    handed = [next(pending) for _ in units]
    assert next(pending, None) is None
    writer = asyncio.create_task(committer.run())
    for n, unit in enumerate(handed[:4], 1):
        committer.put(Fetched(unit, AT, 1, 2, 3, 4, ()))
        await _settle(committer, sink, n // 3)
    assert sink.writes == [days[:3]]  # three complete: one batch; the fourth waits
    assert store.lookup([handed[3]])[handed[3]].status == "staged"  # staged until written
    time.advance(29)
    await _settle(committer, sink, 1)
    assert sink.writes == [days[:3]]
    time.advance(1)  # the fourth has waited batch_seconds: written alone
    await _settle(committer, sink, 2)
    assert sink.writes == [days[:3], days[3:4]]
    committer.put(Fetched(handed[4], AT, 1, 2, 3, 4, ()))
    committer.close()  # closing writes what is complete at once
    await writer
    assert sink.writes == [days[:3], days[3:4], days[4:]]
    assert {s.status for s in store.lookup(handed).values()} == {"done"}
    assert committer.counts.commits == 3
