"""The dataset is the record of what is done; the state is a cache of it.

A unit whose rows are in ``collection_stats`` is done, whatever the state says; a unit the state
calls done whose rows are gone (a partition deleted by hand or by a retention job) is not.
Whether a stored window is final comes from the rows too: fetched (``fetched_at``, UTC) after
its ``period_end``. Pages are there when ``page_stats`` holds rows for the unit.

Reading that stays cheap: one listing of each dataset's part files (size and modification
time), compared with what the state recorded for each partition at commit time. Where a file is
unchanged the state is trusted as it is; only partitions inside the job's window that changed,
vanished, or that the state does not know are read, and only their key columns. What was
learnt is written back into the state (when it is writable), so the next run finds every file
unchanged.

:class:`DatasetView` answers the plan filter's ``lookup`` like the state does; it reconciles
lazily, on the first lookup, so a run has written what an interrupted one left staged first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from harvester.job.model import Job
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import COLLECTION_STATS, DATASETS, PAGE_STATS
from harvester.model import Fingerprint, Unit, period_of
from harvester.state.store import DONE, StateStore, Stored

__all__ = ["DatasetView", "Reconciled", "job_window", "open_state", "reconcile"]

log = logging.getLogger("harvester.record")

Key = tuple[str, str]  # (period, collection_hash): a unit's identity in the state


def job_window(job: Job) -> tuple[date, date]:
    """The first and last day any unit of the job can cover."""
    starts = [c.start for c in job.collections]
    ends = [c.end for c in job.collections]
    if job.discover is not None:
        starts.append(job.discover.start)
        ends.append(job.discover.end)
    if not starts:
        return date.max, date.min
    return min(starts), max(ends)


@dataclass
class Reconciled:
    """What the dataset says that the state did not (or wrongly) know."""

    overlay: dict[Key, Stored | None] = field(default_factory=dict)  # None: not done
    adopted: list[tuple[Unit, bool, bool]] = field(default_factory=list)
    dropped: list[Unit] = field(default_factory=list)
    files: dict[tuple[str, date], Fingerprint | None] = field(default_factory=dict)
    learnt: int = 0  # adopted units the state did not hold as they are
    partitions_read: int = 0
    partitions_listed: int = 0


def reconcile(
    sink: ParquetSink,
    store: StateStore,
    window: tuple[date, date],
    granularity: str,
    *,
    trust_files: bool = True,
) -> Reconciled:
    """Compare the listing with the state's record; read the partitions that differ.

    ``trust_files=False`` reads every partition in the window (``harvester verify``).
    """
    low, high = window
    listed = {
        (name, start): fp
        for name in DATASETS
        for start, fp in sink.list_parts(name).items()
        if low <= start <= high
    }
    recorded = {k: fp for k, fp in store.files().items() if low <= k[1] <= high}
    found = Reconciled(partitions_listed=len(listed))
    changed = {k[1] for k in listed.keys() | recorded.keys() if listed.get(k) != recorded.get(k)}
    if not trust_files:
        changed |= {k[1] for k in listed} | store.done_starts(low, high)
    elif not recorded:
        # A state that never recorded files (or none in this window): check its done units too.
        changed |= store.done_starts(low, high) - {k[1] for k in listed}
    for start in sorted(changed):
        _reconcile_partition(sink, store, start, granularity, start_files(listed, start), found)
        for name in DATASETS:
            found.files[(name, start)] = listed.get((name, start))
    found.partitions_read = sum(1 for s in changed if (COLLECTION_STATS, s) in listed)
    return found


def start_files(
    listed: dict[tuple[str, date], Fingerprint], start: date
) -> dict[str, Fingerprint | None]:
    """Each dataset's part file of one partition, None where it has none."""
    return {name: listed.get((name, start)) for name in DATASETS}


def _reconcile_partition(
    sink: ParquetSink,
    store: StateStore,
    start: date,
    granularity: str,
    files: dict[str, Fingerprint | None],
    found: Reconciled,
) -> None:
    """One partition: its key columns against the state's units that start there."""
    rows: dict[str, tuple[date, bool]] = {}
    if files[COLLECTION_STATS] is not None:
        keys = sink.read(COLLECTION_STATS, ["collection_hash", "period_end", "fetched_at"], [start])
        # Final: fetched on a (UTC) day after the window's end; computed column-wise.
        final = pc.greater(pc.cast(keys["fetched_at"], pa.date32()), keys["period_end"])
        rows = dict(
            zip(
                keys["collection_hash"].to_pylist(),
                zip(keys["period_end"].to_pylist(), final.to_pylist(), strict=True),
                strict=True,
            )
        )
    with_pages: set[tuple[str, date]] = set()
    if files[PAGE_STATS] is not None:
        pages = sink.read(PAGE_STATS, ["collection_hash", "period_end"], [start])
        units = pages.group_by(["collection_hash", "period_end"]).aggregate([])
        with_pages = set(
            zip(units["collection_hash"].to_pylist(), units["period_end"].to_pylist(), strict=True)
        )
    period = period_of(granularity, start).isoformat()
    state = store.in_partition(start)
    for h, known in state.items():
        if known.status == DONE and h not in rows:
            found.overlay[(period, h)] = None
            found.dropped.append(Unit(h, known.start, known.end))
        elif known.status != DONE:
            rows.pop(h, None)  # staged, failed or gone: the state knows better
    overlay, adopted = found.overlay, found.adopted
    for h, (end, final) in rows.items():
        pages = (h, end) in with_pages
        stored = overlay[(period, h)] = Stored(DONE, start, end, final, pages)
        adopted.append((Unit(h, start, end), final, pages))
        if state.get(h) != stored:
            found.learnt += 1


class DatasetView:
    """The state's ``lookup``, corrected by what the dataset holds (see :func:`reconcile`)."""

    def __init__(
        self, store: StateStore, sink: ParquetSink, window: tuple[date, date], *, write: bool
    ) -> None:
        self._store = store
        self._sink = sink
        self._window = window
        self._write = write and not store.readonly
        self._found: Reconciled | None = None

    def load(self) -> Reconciled:
        """Reconcile once (the first lookup does it); write what was learnt into the state."""
        if self._found is None:
            found = reconcile(self._sink, self._store, self._window, self._store.granularity)
            if self._write and (found.adopted or found.dropped or found.files):
                self._store.reconcile(found.adopted, found.dropped, found.files)
            _log(found, self._sink)
            self._found = found
        return self._found

    def lookup(self, units: Sequence[Unit]) -> dict[Unit, Stored]:
        """What is known of each unit's period: the state's row, or the dataset's."""
        overlay = self.load().overlay
        stored = self._store.lookup(units)
        if not overlay:
            return stored
        granularity = self._store.granularity
        for unit in units:
            key = (period_of(granularity, unit.start).isoformat(), unit.collection_hash)
            if key in overlay:
                value = overlay[key]
                if value is None:
                    stored.pop(unit, None)
                else:
                    stored[unit] = value
        return stored


def _log(found: Reconciled, sink: ParquetSink) -> None:
    """Say what the dataset taught the state, when it taught anything."""
    new = found.learnt
    if found.dropped:
        log.warning(
            "%s: %d units the state called done have no rows in the dataset (a partition"
            " removed?): they are fetched again",
            sink.location,
            len(found.dropped),
        )
    if new:
        log.info(
            "rebuilt what is done from the dataset: %d units in %d partitions read (of %d listed)",
            new,
            found.partitions_read,
            found.partitions_listed,
        )


def open_state(path: Path, granularity: str) -> StateStore:
    """The state at ``path`` read-only, or an empty one in memory when there is none."""
    if path.is_file():
        return StateStore(path, readonly=True)
    return StateStore(Path(":memory:"), granularity=granularity)
