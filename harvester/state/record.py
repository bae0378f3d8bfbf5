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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from harvester.errors import BadFile
from harvester.job.model import Job
from harvester.lake.dataset import read_readable
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import COLLECTION_STATS, DATASETS, PAGE_STATS, PARTITION_KEY
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
    # Part files that could not be read: their partitions count as missing. With
    # ``quarantine`` (a run), each was moved aside first (``moved_to``), else ``None``.
    unreadable: list[tuple[BadFile, str | None]] = field(default_factory=list)


# Partitions whose key columns are read in one go: few reads (one scan on Parquet, one log
# replay on Delta), while memory stays bounded on a lake of thousands of partitions.
READ_PARTITIONS = 256


def reconcile(
    sink: ParquetSink,
    store: StateStore,
    window: tuple[date, date],
    granularity: str,
    *,
    trust_files: bool = True,
    quarantine: bool = False,
) -> Reconciled:
    """Compare the listing with the state's record; read the partitions that differ.

    ``trust_files=False`` reads every partition in the window (``harvester verify``).
    ``quarantine`` (a run, which holds the lock) moves an unreadable part file aside; else it
    is only reported. Either way its partition counts as missing.
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
    starts = sorted(changed)
    keys = _read_keys(sink, COLLECTION_STATS, starts, listed, found, quarantine)
    pages = _read_keys(sink, PAGE_STATS, starts, listed, found, quarantine)
    for start in starts:
        _reconcile_partition(store, start, granularity, keys.get(start, {}), pages, found)
        for name in DATASETS:
            found.files[(name, start)] = listed.get((name, start))
    found.partitions_read = sum(1 for s in changed if (COLLECTION_STATS, s) in listed)
    return found


def _read_keys(
    sink: ParquetSink,
    name: str,
    starts: list[date],
    listed: dict[tuple[str, date], Fingerprint],
    found: Reconciled,
    quarantine: bool,
) -> dict[date, dict[str, tuple[date, bool]]]:
    """The units one dataset holds in these partitions: hash → (period_end, final) by
    partition (for ``page_stats``: the units with pages, final False). An unreadable file is
    set aside (and its partition's entry removed from ``listed``)."""

    def set_aside(bad: BadFile) -> None:
        found.unreadable.append((bad, sink.quarantine(bad) if quarantine else None))
        listed.pop((bad.dataset, bad.period_start), None)

    wanted = [s for s in starts if (name, s) in listed]
    columns = [PARTITION_KEY, "collection_hash", "period_end"]
    if name == COLLECTION_STATS:
        columns.append("fetched_at")
    units: dict[date, dict[str, tuple[date, bool]]] = {}
    for i in range(0, len(wanted), READ_PARTITIONS):
        chunk = wanted[i : i + READ_PARTITIONS]
        table, _ = read_readable(sink, name, columns, chunk, set_aside)
        for start, h, end, final in _key_rows(table, name):
            units.setdefault(start, {})[h] = (end, final)
    return units


def _key_rows(table: pa.Table, name: str) -> Iterator[tuple[date, str, date, bool]]:
    """Each unit of the rows once: partition, hash, end, and (collection_stats) whether it is
    final: fetched on a (UTC) day after the window's end."""
    keys = [PARTITION_KEY, "collection_hash", "period_end"]
    if name == COLLECTION_STATS:
        final = pc.greater(pc.cast(table["fetched_at"], pa.date32()), table["period_end"])
    else:
        table = table.select(keys).group_by(keys).aggregate([])
        final = pa.array([False] * table.num_rows, pa.bool_())
    return zip(
        table[PARTITION_KEY].to_pylist(),
        table["collection_hash"].to_pylist(),
        table["period_end"].to_pylist(),
        final.to_pylist(),
        strict=True,
    )


def _reconcile_partition(
    store: StateStore,
    start: date,
    granularity: str,
    rows: dict[str, tuple[date, bool]],
    pages: dict[date, dict[str, tuple[date, bool]]],
    found: Reconciled,
) -> None:
    """One partition: its key columns against the state's units that start there."""
    rows = dict(rows)
    with_pages = {(h, end) for h, (end, _) in pages.get(start, {}).items()}
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
        has_pages = (h, end) in with_pages
        stored = overlay[(period, h)] = Stored(DONE, start, end, final, has_pages)
        adopted.append((Unit(h, start, end), final, has_pages))
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
            found = reconcile(
                self._sink,
                self._store,
                self._window,
                self._store.granularity,
                quarantine=self._write,
            )
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
    for bad, moved in found.unreadable:
        log.warning(
            "%s: unreadable part file (%s): %s; its partition counts as missing and is fetched"
            " again",
            bad.path,
            bad.reason,
            f"moved aside to {moved}" if moved else "left as it is",
        )
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
