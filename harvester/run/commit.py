"""From fetched answers to committed rows: the plan filter, partition bookkeeping, commits.

:class:`Ledger` is the one owner of partition bookkeeping. It filters the plan against the
state, counts what it hands out per output partition (``period_start``), and knows when a
partition is complete: every unit handed out for it has been resolved (fetched, failed, skipped
or abandoned).

*Done* is one rule (:meth:`Ledger.pending`): a period stored final, with pages when pages are
on, whose stored window covers the planned one, needs no call. A window that grows (an earlier
start, a later end) or a provisional one is fetched again, and then over the union of the two
windows: a stored window never shrinks. So when a rolling ``start: -30d`` moves later, the
finished periods stay as they are stored, and only periods not stored yet are clipped to the
new start.

:class:`Committer` is the single writer. A fetched unit is staged in the state store at once
(group-committed), so a kill loses at most the units in flight. When the ledger says a
partition is complete, it is rewritten from the staged answers (replacing older windows of the
same calendar periods, wherever they sit) and its units are marked done. A crash between the
two is repaired by :meth:`Committer.flush_all` at the next start. The newest answer wins: a
staged answer is dropped when the dataset already holds a newer ``fetched_at`` for its unit
(another run wrote it meanwhile), so ``fetched_at`` never moves backwards.

Complete partitions are handed to the sink in batches of up to ``sink.batch_partitions`` (one
for Parquet: each partition is its own file, written as soon as it is complete; dozens for
Delta, one commit per table for the whole batch), or whatever completed within
``sink.batch_seconds``. Units stay staged until their batch is written and marked done in one
transaction, so a kill at any moment leaves them staged: the next run writes them, exactly.

Both return their counts; :mod:`harvester.run.pipeline` builds the report from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import NamedTuple, Protocol

from harvester.errors import ApiRejected, InvalidPayload, NotFetched, UnitError
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import PartitionWrite
from harvester.model import Clock, Fetched, Unit, period_end, period_of, system_clock
from harvester.redact import redact, redact_data
from harvester.run.report import FailedEntry
from harvester.state.store import DONE, GONE, StateStore, Stored

__all__ = [
    "CommitCounts",
    "Committer",
    "Gone",
    "Ledger",
    "PlanCounts",
    "Quarantine",
    "Rules",
    "is_gone",
]

log = logging.getLogger("harvester.commit")

GONE_CODES = frozenset({43, 46})  # forbidden (deleted, not ours), invalid hash: for good


def is_gone(exc: UnitError) -> bool:
    """Whether the API said the collection is deleted, not ours, or never existed."""
    return isinstance(exc, ApiRejected) and exc.code in GONE_CODES


@dataclass(frozen=True)
class Rules:
    """What decides whether a planned unit needs a call."""

    today: date  # UTC, read once per run: windows starting later have not begun
    page_stats: bool = True  # a unit written without pages is fetched again when pages are on
    refresh_from: date | None = None  # done units ending on or after it are fetched again
    retry_gone: bool = False  # fetch units of collections recorded as gone
    granularity: str = "day"
    start: date | None = None  # only units whose calendar window meets [start, end]
    end: date | None = None

    def selects(self, unit: Unit) -> bool:
        """Whether the unit's calendar window (not the clipped one) meets [start, end]."""
        if self.start is None and self.end is None:
            return True
        first = period_of(self.granularity, unit.start)
        if self.granularity == "range":
            first, last = unit.start, unit.end
        else:
            last = period_end(self.granularity, first) or unit.end
        return (self.start is None or last >= self.start) and (
            self.end is None or first <= self.end
        )


@dataclass
class PlanCounts:
    """What the plan filter decided, unit by unit."""

    already_done: int = 0
    to_fetch: int = 0
    provisional: int = 0  # of to_fetch: written before their window ended
    changed: int = 0  # of to_fetch: stored with a window that does not cover the planned one
    not_begun: int = 0  # windows that start after today: neither fetched nor recorded
    gone: int = 0  # units of collections recorded as gone, skipped
    outside: int = 0  # outside the window the run was narrowed to (RunOptions start/end)


class Known(Protocol):
    """What the plan filter asks: the state, or the state checked against the dataset."""

    def lookup(self, units: Sequence[Unit]) -> dict[Unit, Stored]: ...


class Ledger:
    """The plan minus what is done, and the count of each partition's unresolved units."""

    def __init__(self, store: Known | None, rules: Rules, gone: set[str]) -> None:
        self._store = store  # None: nothing recorded yet (a plan before the first run)
        self._rules = self.rules = rules
        self._gone = gone  # shared with the committer, which adds to it
        self._outstanding: defaultdict[date, int] = defaultdict(int)
        self._closed: set[date] = set()
        self._ready: list[date] = []
        self._sharing: dict[date, int] = {}  # partitions several plan streams hand out
        self.counts = PlanCounts()

    def share(self, start: date, streams: int) -> None:
        """``streams`` plan streams (one per account) hand out units of this partition: it is
        closed when the last of them has closed it."""
        self._sharing[start] = self._sharing.get(start, 0) + streams

    def pending(self, batches: Iterable[list[Unit]]) -> Iterator[Unit]:
        """The units that need a call, lazily, batch by batch (a batch is one window)."""
        rules, counts = self._rules, self.counts
        # A refresh of everything needs no lookup, except to keep stored windows whole (a day's
        # window is always its whole period).
        skip_lookup = rules.refresh_from == date.min and rules.granularity == "day"
        narrowed = rules.start is not None or rules.end is not None
        for batch in batches:
            selected = [u for u in batch if rules.selects(u)] if narrowed else batch
            counts.outside += len(batch) - len(selected)
            begun = [u for u in selected if u.start <= rules.today]
            counts.not_begun += len(selected) - len(begun)
            if self._gone and not rules.retry_gone:
                kept = [u for u in begun if u.collection_hash not in self._gone]
                counts.gone += len(begun) - len(kept)
                begun = kept
            # One state lookup per batch, not per unit: a million-unit plan spends its time here.
            lookup = begun and not skip_lookup and self._store is not None
            stored = self._store.lookup(begun) if lookup and self._store is not None else {}
            # The loop below runs once per unit of the plan: locals, and the cover test inline.
            pages, refresh_from, outstanding = (
                rules.page_stats,
                rules.refresh_from,
                self._outstanding,
            )
            done = 0
            widened: set[date] = set()  # partitions of stored windows wider than the planned
            for unit in begun:
                row = stored.get(unit)
                if row is not None and row.status == DONE:
                    covers = row.start <= unit.start and row.end >= unit.end
                    whole = covers and row.final and (row.pages or not pages)
                    if whole and (refresh_from is None or unit.end < refresh_from):
                        done += 1
                        continue
                    if not covers:
                        counts.changed += 1
                    elif not row.final:
                        counts.provisional += 1
                    if row.start < unit.start or row.end > unit.end:  # never shrink it
                        start, end = min(row.start, unit.start), max(row.end, unit.end)
                        unit = Unit(unit.collection_hash, start, end)
                        widened.add(start)
                counts.to_fetch += 1
                outstanding[unit.start] += 1
                yield unit
            counts.already_done += done
            self._close({unit.start for unit in batch} | widened)

    def _close(self, starts: Iterable[date]) -> None:
        """No more units will be handed out for these partitions."""
        for start in sorted(starts):
            sharing = self._sharing.get(start)
            if sharing is not None:
                if sharing > 1:
                    self._sharing[start] = sharing - 1
                    continue
                del self._sharing[start]
            if self._outstanding.get(start, 0) == 0:
                self._outstanding.pop(start, None)
                self._ready.append(start)
            else:
                self._closed.add(start)

    def resolved(self, unit: Unit) -> None:
        """A unit handed out has ended (staged, failed, skipped or abandoned)."""
        start = unit.start
        self._outstanding[start] -= 1
        if self._outstanding[start] == 0 and start in self._closed:
            del self._outstanding[start]
            self._closed.discard(start)
            self._ready.append(start)

    def take_ready(self) -> list[date]:
        """The partitions that became complete since the last call, in order."""
        ready, self._ready = self._ready, []
        return ready


class Quarantine:
    """Invalid payloads, one JSON line each, kept for inspection (redacted)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def add(self, exc: InvalidPayload) -> None:
        """Append the unit, the reason and the raw payload."""
        assert exc.unit is not None
        entry = {
            "collection_hash": exc.unit.collection_hash,
            "start": exc.unit.start.isoformat(),
            "end": exc.unit.end.isoformat(),
            "reason": exc.reason,
            "payload": exc.payload,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            # Redacted before encoding: JSON escapes would hide a secret from redact().
            line = json.dumps(redact_data(entry), default=lambda o: redact(repr(o)))
            fh.write(line + "\n")
        self.count += 1


class Gone(NamedTuple):
    """A unit not fetched because its collection is gone (learnt earlier in this run)."""

    unit: Unit


Outcome = Fetched | UnitError | Gone | Unit  # a Unit alone: abandoned by a stop
_CLOSE: object = object()
_TICK: object = object()  # a batch's time is up: write what is complete
# A batch is written once it holds this many rows, whatever the sink's batch size: memory.
BATCH_ROWS = 500_000


@dataclass
class CommitCounts:
    """What the writer did."""

    fetched: int = 0  # answers staged by this run
    committed: int = 0  # of those, written to the datasets and marked done
    recovered: int = 0  # answers an interrupted run had staged, written at the start
    superseded: int = 0  # staged answers dropped: the dataset already held newer ones
    failed: int = 0
    gone: int = 0  # units whose collection the API said is gone (43/46), this run
    page_rows: int = 0
    collection_rows: int = 0
    files: int = 0
    partitions: int = 0
    commits: int = 0  # write_partitions calls (for Delta: commits per table)
    lost: int = 0  # done units whose part file was unreadable when rewritten: fetched again
    failures: list[FailedEntry] = field(default_factory=list)


class Committer:
    """The single writer: stages outcomes as they come, writes partitions as they complete."""

    def __init__(
        self,
        store: StateStore,
        sink: ParquetSink,
        ledger: Ledger,
        quarantine: Quarantine,
        rules: Rules,
        gone: set[str],
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._sink = sink
        self._ledger = ledger
        self._quarantine = quarantine
        self._rules = rules
        self._gone = gone
        self._queue: asyncio.Queue[Outcome | object] = asyncio.Queue()
        self._unstaged: list[Fetched] = []
        # What this run staged, by partition: written from memory, not read back and decoded.
        self._staged_here: defaultdict[date, list[Fetched]] = defaultdict(list)
        self._gone_logged: set[str] = set()
        self._clock = clock or system_clock()
        # Complete partitions waiting for their batch to be written, and since when.
        self._ready: list[date] = []
        self._ready_rows = 0
        self._ready_since = 0.0
        self._tick: asyncio.Task[None] | None = None
        self._busy = False
        self.counts = CommitCounts()

    def put(self, outcome: Outcome) -> None:
        """Hand an outcome to the writer (never blocks a worker); a result is staged at once."""
        if isinstance(outcome, Fetched):
            # Staged on the loop's next turn, not when the writer gets to it: the writer may be
            # busy writing a partition, and a kill must lose no more than the requests in flight.
            if not self._unstaged:
                asyncio.get_running_loop().call_soon(self._stage_soon)
            self._unstaged.append(outcome)
        elif isinstance(outcome, UnitError) and is_gone(outcome) and outcome.unit is not None:
            self._gone.add(outcome.unit.collection_hash)  # at once: workers skip the rest
        self._queue.put_nowait(outcome)

    def _stage_soon(self) -> None:
        """Stage what :meth:`put` collected; a failure is left for the writer to raise."""
        with contextlib.suppress(Exception):
            self._stage()

    def _stage(self) -> None:
        """Stage every result not staged yet, in one transaction."""
        if self._unstaged:
            self._store.stage(self._unstaged)
            self.counts.fetched += len(self._unstaged)
            for result in self._unstaged:
                self._staged_here[result.unit.start].append(result)
            self._unstaged = []

    async def run(self) -> None:
        """Commit outcomes until :meth:`close`; each wake-up commits everything queued at once."""
        try:
            while True:
                self._busy = False
                batch = [await self._queue.get()]
                self._busy = True
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                closing = batch[-1] is _CLOSE
                outcomes = [o for o in batch if o is not _CLOSE and o is not _TICK]
                if outcomes:
                    await self._commit(outcomes)  # type: ignore[arg-type]
                while self._ready and (closing or self._due()):
                    self.counts.committed += await self._write_batch()
                if closing:
                    return
        finally:
            self._cancel_tick()

    @property
    def idle(self) -> bool:
        """Nothing queued and no write under way (for tests that drive the writer)."""
        return self._queue.empty() and not self._busy

    def close(self) -> None:
        """Ask :meth:`run` to return once everything queued so far is committed."""
        self._queue.put_nowait(_CLOSE)

    async def _commit(self, batch: Sequence[Outcome]) -> None:
        """Stage results and failures in one go, then write the partitions now complete."""
        self._stage()
        for outcome in batch:
            if isinstance(outcome, UnitError):
                self._record_failure(outcome)
            elif isinstance(outcome, Gone):
                self.counts.gone += 1
        for outcome in batch:
            unit = outcome if isinstance(outcome, Unit) else outcome.unit
            if unit is not None:
                self._ledger.resolved(unit)
        for start in self._ledger.take_ready():
            self._add_ready(start)

    def _add_ready(self, start: date) -> None:
        """A complete partition joins the batch; the batch's clock starts with its first."""
        if start in self._ready:
            return
        if not self._ready:
            self._ready_since = self._clock.monotonic()
            seconds = self._sink.batch_seconds
            if seconds > 0 and self._sink.batch_partitions > 1:
                self._tick = asyncio.create_task(self._tick_after(seconds))
        self._ready.append(start)
        self._ready_rows += sum(1 + len(r.pages) for r in self._staged_here.get(start, ()))

    async def _tick_after(self, seconds: float) -> None:
        await self._clock.sleep(seconds)
        self._queue.put_nowait(_TICK)

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _due(self) -> bool:
        """Whether the batch of complete partitions is to be written now."""
        if not self._ready:
            return False
        sink = self._sink
        return (
            len(self._ready) >= sink.batch_partitions
            or self._ready_rows >= BATCH_ROWS
            or self._clock.monotonic() - self._ready_since >= sink.batch_seconds
        )

    def _record_failure(self, exc: UnitError) -> None:
        """Record a failed unit in the state, the counts and (for bad payloads) the quarantine."""
        unit = exc.unit
        assert unit is not None
        gone = is_gone(exc)
        if gone:
            self.counts.gone += 1
            if unit.collection_hash in self._gone_logged:
                return  # answered while the first refusal was in flight: one line per collection
            self._gone_logged.add(unit.collection_hash)
        self._store.mark_failed(
            unit, kind=exc.kind, reason=exc.reason, attempts=exc.attempts, gone=gone
        )
        self.counts.failures.append(FailedEntry.from_error(exc, gone=gone))
        if isinstance(exc, InvalidPayload):
            self._quarantine.add(exc)
        if gone:
            log.error(
                "%s: %s; the collection is recorded as %s: later runs skip it "
                "(run with --retry-gone to try it again)",
                unit.collection_hash,
                exc.reason,
                GONE,
            )
            return
        self.counts.failed += 1
        if isinstance(exc, NotFetched):
            return  # the stop was logged once; its units would repeat it line after line
        log.error("%s failed: %s (%s, %d attempts)", unit, exc.reason, exc.kind, exc.attempts)

    async def _write_batch(self) -> int:
        """Write a batch (the first ``sink.batch_partitions``) of the complete partitions from
        the answers this run staged; return the units written. The rest wait for the next.

        The run began by writing whatever an earlier run left staged, so this run's answers are
        all a partition completed in it has. Older windows of the same periods are removed in
        the same write, wherever they sit.
        """
        size = max(1, self._sink.batch_partitions)
        starts, rest = self._ready[:size], self._ready[size:]
        self._ready, self._ready_rows = [], 0
        self._cancel_tick()
        for start in rest:  # a new batch, its clock started now
            self._add_ready(start)
        writes = []
        for start in starts:
            here = self._staged_here.pop(start, None)
            results = here if here is not None else self._store.staged(start)
            write = self._partition(start, results) if results else None
            if write is not None:
                writes.append(write)
        return await self._write(writes)

    def _partition(self, start: date, results: list[Fetched]) -> PartitionWrite | None:
        """What to write of one partition: its results the dataset holds nothing newer for."""
        results = self._drop_superseded(start, results)
        if not results:
            return None
        return PartitionWrite(start, results, self._store.replaced([r.unit for r in results]))

    async def _write(self, writes: list[PartitionWrite]) -> int:
        """Write partitions in one go (for Delta: one commit per table), then mark their units
        done in one transaction; return the units written."""
        if not writes:
            return 0
        # Parquet encoding and fsync release the GIL: keep the event loop answering meanwhile.
        written = await asyncio.to_thread(self._sink.write_partitions, writes)
        units = list({r.unit: None for w in writes for r in w.results})
        self._store.mark_done(units, self._sink.take_touched())
        self._forget_lost(set(units))
        counts = self.counts
        counts.page_rows += written.page_rows
        counts.collection_rows += written.collection_rows
        counts.files += written.files
        counts.partitions += len(writes)
        counts.commits += 1
        for w in writes:  # a line per partition, as before batches (tests and people grep it)
            log.debug("committed %s: %d units", w.period_start, len({r.unit for r in w.results}))
        return len(units)

    def _drop_superseded(self, period_start: date, results: list[Fetched]) -> list[Fetched]:
        """The results to write: those the dataset holds no newer answer for (the others are
        dropped, and their units are done as the dataset holds them)."""
        older = self._store.superseded(results)
        if not older:
            return results
        units = {r.unit for r in older}
        self._store.keep_written(list(units))
        self.counts.superseded += len(units)
        log.warning(
            "%s: dropped %d fetched answers: the dataset already holds newer ones for their"
            " units (written by another run), which stay as they are",
            period_start,
            len(units),
        )
        return [r for r in results if r.unit not in units]

    def _forget_lost(self, written: set[Unit]) -> None:
        """Units whose rows were in a part file found unreadable while rewriting it (then moved
        aside): no longer done, so the next run fetches them again."""
        for moved in self._sink.take_lost():
            bad = moved.file
            held = self._store.in_partition(bad.period_start)
            lost = [
                Unit(h, s.start, s.end)
                for h, s in held.items()
                if s.status == DONE and Unit(h, s.start, s.end) not in written
            ]
            self._store.forget(lost)
            self.counts.lost += len(lost)
            log.warning(
                "%s: unreadable part file (%s), moved aside to %s; %d units it held are fetched"
                " again by the next run",
                bad.path,
                bad.reason,
                moved.moved_to,
                len(lost),
            )

    async def flush_all(self, *, recovery: bool = False) -> int:
        """Write every partition that still has staged answers; return the units written.

        ``recovery``: at the start of a run, what an interrupted run left; else the end of
        this run (partitions a stop left incomplete).
        """
        total = 0
        while self._ready:
            total += await self._write_batch()
        self._staged_here.clear()
        periods = self._store.staged_periods()
        size = max(1, self._sink.batch_partitions)
        for i in range(0, len(periods), size):
            chunk = periods[i : i + size]
            writes = [self._partition(s, self._store.staged(s)) for s in chunk]
            total += await self._write([w for w in writes if w is not None])
        if recovery:
            self.counts.recovered += total
        else:
            self.counts.committed += total
        return total
