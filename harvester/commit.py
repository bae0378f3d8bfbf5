"""From fetched answers to committed rows: staging, partition tracking, Parquet upserts.

A fetched unit is staged in the state store at once (group-committed by a single writer task),
so a kill loses at most the units in flight. When every planned unit of an output partition
(``period_start``) is resolved, the partition is rewritten in Parquet from the staged answers
and its units are marked done. A crash between the two is repaired by :meth:`Committer.flush_all`
at the next start: staged answers are written again (an upsert: same rows, no refetch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import date
from pathlib import Path

from harvester.errors import InvalidPayload, UnitError
from harvester.model import Fetched, Unit
from harvester.redact import redact, redact_data
from harvester.report import FailedEntry, RunReport
from harvester.sink import ParquetSink
from harvester.state import StateStore

__all__ = ["Committer", "PartitionTracker", "Quarantine", "pending_units"]

log = logging.getLogger("harvester.commit")


class PartitionTracker:
    """Counts each partition's unresolved units; says when a partition is complete."""

    def __init__(self) -> None:
        self._outstanding: defaultdict[date, int] = defaultdict(int)
        self._closed: set[date] = set()

    def planned(self, unit: Unit) -> None:
        """A unit of ``unit.start``'s partition was handed out."""
        self._outstanding[unit.start] += 1

    def close(self, starts: Iterable[date]) -> list[date]:
        """No more units will be planned for these partitions; return the complete ones."""
        ready = []
        for start in starts:
            if self._outstanding.get(start, 0) == 0:
                self._outstanding.pop(start, None)
                ready.append(start)
            else:
                self._closed.add(start)
        return ready

    def resolved(self, unit: Unit) -> date | None:
        """A unit ended (staged, failed or abandoned); return its partition if now complete."""
        start = unit.start
        self._outstanding[start] -= 1
        if self._outstanding[start] == 0 and start in self._closed:
            del self._outstanding[start]
            self._closed.discard(start)
            return start
        return None


def pending_units(
    batches: Iterable[list[Unit]],
    store: StateStore,
    tracker: PartitionTracker,
    report: RunReport,
    *,
    refresh_from: date | None,
    ready: list[date],
) -> Iterator[Unit]:
    """The plan minus what the state says is done (unless refreshed), lazily, batch by batch.

    ``refresh_from``: units ending on or after it are fetched even when done (``date.min``
    refreshes everything). Partitions that become complete when a batch closes go to ``ready``.
    """
    refresh_all = refresh_from == date.min
    for batch in batches:
        # One filter per batch, not per unit: a million-unit plan spends its time here.
        done = store.done_among(batch) if batch and not refresh_all else set()
        todo = batch
        if done:
            todo = [
                u
                for u in batch
                if u not in done or (refresh_from is not None and u.end >= refresh_from)
            ]
            report.units_already_done += len(batch) - len(todo)
        planned = tracker.planned
        for unit in todo:
            report.units_to_fetch += 1
            planned(unit)
            yield unit
        ready.extend(tracker.close({unit.start for unit in batch}))


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


Outcome = Fetched | UnitError | Unit  # a Unit alone: abandoned by a stop
_CLOSE: object = object()


class Committer:
    """The single writer: stages outcomes as they come, writes partitions as they complete."""

    def __init__(
        self,
        store: StateStore,
        sink: ParquetSink,
        tracker: PartitionTracker,
        report: RunReport,
        quarantine: Quarantine,
        ready: list[date],
    ) -> None:
        self._store = store
        self._sink = sink
        self._tracker = tracker
        self._report = report
        self._quarantine = quarantine
        self._ready = ready
        self._queue: asyncio.Queue[Outcome | object] = asyncio.Queue()
        self._unstaged: list[Fetched] = []
        # What this run staged, by partition: written from memory, not read back and decoded.
        self._staged_here: defaultdict[date, list[Fetched]] = defaultdict(list)

    def put(self, outcome: Outcome) -> None:
        """Hand an outcome to the writer (never blocks a worker); a result is staged at once."""
        if isinstance(outcome, Fetched):
            # Staged on the loop's next turn, not when the writer gets to it: the writer may be
            # busy writing a partition, and a kill must lose no more than the requests in flight.
            if not self._unstaged:
                asyncio.get_running_loop().call_soon(self._stage_soon)
            self._unstaged.append(outcome)
        self._queue.put_nowait(outcome)

    def _stage_soon(self) -> None:
        """Stage what :meth:`put` collected; a failure is left for the writer to raise."""
        with contextlib.suppress(Exception):
            self._stage()

    def _stage(self) -> None:
        """Stage every result not staged yet, in one transaction."""
        if self._unstaged:
            self._store.stage(self._unstaged)
            self._report.units_fetched += len(self._unstaged)
            for result in self._unstaged:
                self._staged_here[result.unit.start].append(result)
            self._unstaged = []

    async def run(self) -> None:
        """Commit outcomes until :meth:`close`; each wake-up commits everything queued at once."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            closing = batch[-1] is _CLOSE
            outcomes = [o for o in batch if o is not _CLOSE]
            if outcomes:
                await self._commit(outcomes)  # type: ignore[arg-type]
            if closing:
                return

    def close(self) -> None:
        """Ask :meth:`run` to return once everything queued so far is committed."""
        self._queue.put_nowait(_CLOSE)

    async def _commit(self, batch: Sequence[Outcome]) -> None:
        """Stage results and failures in one go, then write the partitions now complete."""
        self._stage()
        for outcome in batch:
            if isinstance(outcome, UnitError):
                self._record_failure(outcome)
        for outcome in batch:
            unit = outcome.unit if not isinstance(outcome, Unit) else outcome
            if unit is not None and (start := self._tracker.resolved(unit)) is not None:
                self._ready.append(start)
        while self._ready:
            await self.flush(self._ready.pop(0))

    def _record_failure(self, exc: UnitError) -> None:
        """Record a failed unit in the state, the report and (for bad payloads) the quarantine."""
        assert exc.unit is not None
        self._store.mark_failed(exc.unit, kind=exc.kind, reason=exc.reason, attempts=exc.attempts)
        self._report.units_failed += 1
        self._report.failed.append(FailedEntry.from_error(exc))
        if isinstance(exc, InvalidPayload):
            self._quarantine.add(exc)
        log.error("%s failed: %s (%s, %d attempts)", exc.unit, exc.reason, exc.kind, exc.attempts)

    async def flush(self, period_start: date, *, from_store: bool = False) -> int:
        """Upsert one partition from its staged answers, then mark them done; return units.

        A partition completed in this run is written from the answers this run staged (the
        run began by writing whatever an earlier run left staged, so they are all there);
        ``from_store`` reads them back from the state instead.
        """
        here = self._staged_here.pop(period_start, None)
        results = self._store.staged(period_start) if from_store or here is None else here
        if not results:
            return 0
        # Parquet encoding and fsync release the GIL: keep the event loop answering meanwhile.
        written = await asyncio.to_thread(self._sink.write_partition, period_start, results)
        self._store.mark_done([r.unit for r in results])
        report = self._report
        report.units_committed += len(results)
        report.page_rows_written += written.page_rows
        report.collection_rows_written += written.collection_rows
        report.files_written += written.files
        report.partitions_written += 1
        log.debug("committed %s: %d units", period_start, len(results))
        return len(results)

    async def flush_all(self) -> int:
        """Write every partition that still has staged answers (recovery, and the final flush)."""
        total = 0
        for period_start in self._store.staged_periods():
            total += await self.flush(period_start, from_store=True)
        self._staged_here.clear()
        return total
