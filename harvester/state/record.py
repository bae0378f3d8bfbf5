"""The dataset is the record of what is done; the state is a cache of it.

A unit whose rows are in ``collection_stats`` is done, whatever the state says; a unit the state
calls done whose rows are gone (a partition deleted by hand or by a retention job) is not. A
collection row says all the rest: its window, when it was fetched (``fetched_at``: final when
fetched on a later day than its ``period_end``, :func:`harvester.model.is_final`), whether pages
were asked for (``pages_requested``) and how many came (``page_count``), so a unit asked with
pages that had none (nobody opened the flipbook that day) is done too. A unit asked with pages
whose page rows are gone (its ``page_stats`` partition deleted) is not. Rows written before
``pages_requested`` existed (null there) hold pages when ``page_stats`` has rows for them.

Reading that stays cheap: one listing of each dataset's part files (size and modification
time), compared with what the state recorded for each partition at commit time. Where a file is
unchanged the state is trusted as it is; only partitions inside the job's window that changed,
vanished, or that the state does not know are read, and only their key columns (``page_stats``
only for rows from before ``pages_requested``: its listing says whether a partition's pages are
there). What was learnt is written back into the state (when it is writable), so the next run
finds every file unchanged. Units the state has *staged* learn what the dataset holds under them
(another run may have written newer rows meanwhile: the commit then keeps those).

:class:`DatasetView` answers the plan filter's ``lookup`` like the state does; a run loads it
before writing what an interrupted one left staged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from harvester.errors import BadFile
from harvester.job.model import Job
from harvester.lake.dataset import read_readable
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import COLLECTION_STATS, DATASETS, PAGE_STATS, PARTITION_KEY
from harvester.model import Fingerprint, Unit, is_final, period_end, period_of
from harvester.state.store import DONE, STAGED, Held, StateStore, Stored

__all__ = ["DatasetView", "Reconciled", "job_window", "open_state", "reconcile"]

log = logging.getLogger("harvester.record")

Key = tuple[str, str]  # (period, collection_hash): a unit's identity in the state
_KEYS = ["collection_hash", "period_end", "fetched_at", "pages_requested", "page_count"]


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
    adopted: list[Held] = field(default_factory=list)
    dropped: list[Unit] = field(default_factory=list)  # done in the state, not in the dataset
    unpaged: list[Unit] = field(default_factory=list)  # done in the state, their pages gone
    written: list[Held] = field(default_factory=list)  # what staged units are staged over
    missing_pages: list[Unit] = field(default_factory=list)  # asked with pages, none there
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


class _Row(NamedTuple):
    """One collection row, read back: what it holds, and whether its page rows are missing."""

    held: Held
    pages_missing: bool


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

    ``trust_files=False`` reads every partition in the window, page rows included, and counts
    each unit's page rows against its ``page_count`` (``harvester verify``).
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
    # A page file that changed is read too: it may be damaged, or hold fewer rows than it did.
    pages_changed = {
        s for s in changed if listed.get((PAGE_STATS, s)) != recorded.get((PAGE_STATS, s))
    }
    rows: dict[Key, _Row] = {}  # the dataset's row of each period (the newest, should it hold two)
    partition_rows = _partition_rows(
        sink, starts, listed, found, quarantine, exact=not trust_files, pages_changed=pages_changed
    )
    for row in partition_rows:
        unit = row.held.unit
        key = (period_of(granularity, unit.start).isoformat(), unit.collection_hash)
        if key not in rows or row.held.fetched_at > rows[key].held.fetched_at:
            rows[key] = row
    here: dict[Key, Unit] = {}  # the state's done units in the partitions read
    for start in starts:
        period = period_of(granularity, start).isoformat()
        for h, known in store.in_partition(start).items():
            if known.status == DONE:
                here[(period, h)] = Unit(h, known.start, known.end)
        for name in DATASETS:
            found.files[(name, start)] = listed.get((name, start))
    found.partitions_read = sum(1 for s in changed if (COLLECTION_STATS, s) in listed)
    _judge(found, rows, here, store.lookup([row.held.unit for row in rows.values()]))
    return found


def _judge(
    found: Reconciled, rows: dict[Key, _Row], here: dict[Key, Unit], state: dict[Unit, Stored]
) -> None:
    """Each period the dataset holds against the state's row for it; then the state's done
    units whose rows are gone."""
    for key, (held, pages_missing) in rows.items():
        unit = held.unit
        known = state.get(unit)
        if known is not None and known.status == STAGED:
            found.written.append(held)  # the commit decides: the newer answer stays
            continue
        if known is not None and known.status != DONE:
            continue  # failed or gone: the state knows better
        if pages_missing:
            found.missing_pages.append(unit)
            found.overlay[key] = None
            if known is not None:
                found.unpaged.append(Unit(unit.collection_hash, known.start, known.end))
            continue
        stored = Stored(DONE, unit.start, unit.end, is_final(unit.end, held.fetched_at), held.pages)
        found.overlay[key] = stored
        found.adopted.append(held)
        if known != stored:
            found.learnt += 1
    for key, unit in here.items():
        if key not in found.overlay and key not in rows:
            found.overlay[key] = None
            found.dropped.append(unit)


def start_files(
    listed: dict[tuple[str, date], Fingerprint], start: date
) -> dict[str, Fingerprint | None]:
    """Each dataset's part file of one partition, None where it has none."""
    return {name: listed.get((name, start)) for name in DATASETS}


def _read(
    sink: ParquetSink,
    name: str,
    columns: list[str],
    starts: list[date],
    listed: dict[tuple[str, date], Fingerprint],
    found: Reconciled,
    quarantine: bool,
) -> Iterator[pa.Table]:
    """One dataset's ``columns`` in these partitions, a few hundred partitions per scan. An
    unreadable file is set aside (moved to the quarantine by a run) and its partition's entry
    removed from ``listed``: its units count as missing."""

    def set_aside(bad: BadFile) -> None:
        found.unreadable.append((bad, sink.quarantine(bad) if quarantine else None))
        listed.pop((bad.dataset, bad.period_start), None)

    wanted = [s for s in starts if (name, s) in listed]
    for i in range(0, len(wanted), READ_PARTITIONS):
        table, _ = read_readable(
            sink, name, [PARTITION_KEY, *columns], wanted[i : i + READ_PARTITIONS], set_aside
        )
        yield table


def _partition_rows(
    sink: ParquetSink,
    starts: list[date],
    listed: dict[tuple[str, date], Fingerprint],
    found: Reconciled,
    quarantine: bool,
    *,
    exact: bool,
    pages_changed: set[date],
) -> Iterator[_Row]:
    """The collection rows of these partitions, each with whether its page rows are missing.

    Page rows are read (key columns only) when ``exact``, for partitions whose page file
    changed since the state recorded it, or for partitions holding rows from before
    ``pages_requested``; where they are read each unit's page rows are counted against its
    ``page_count``, elsewhere the listing says whether a partition's page file is there.
    """
    tables = list(_read(sink, COLLECTION_STATS, _KEYS, starts, listed, found, quarantine))
    columns = [PARTITION_KEY, *_KEYS]
    rows = [zip(*(t[c].to_pylist() for c in columns), strict=True) for t in tables]
    flat = [r for chunk in rows for r in chunk]
    unknown = {r[0] for r in flat if r[4] is None}  # partitions with rows from before the column
    counted: dict[tuple[date, str, date], int] = {}
    page_starts = [s for s in starts if exact or s in unknown or s in pages_changed]
    keys = [PARTITION_KEY, "collection_hash", "period_end"]
    for pages in _read(sink, PAGE_STATS, keys[1:], page_starts, listed, found, quarantine):
        units = pages.group_by(keys).aggregate([([], "count_all")])
        triples = zip(*(units[c].to_pylist() for c in [*keys, "count_all"]), strict=True)
        counted.update({(s, h, end): n for s, h, end, n in triples})
    for start, h, end, fetched_at, requested, count in flat:
        page_file = (PAGE_STATS, start) in listed
        got = counted.get((start, h, end), 0)
        if requested is None:  # written before it was recorded: pages if there are page rows
            yield _Row(Held(Unit(h, start, end), fetched_at, got > 0), False)
            continue
        checked = exact or start in pages_changed
        missing = requested and (got != count if checked else count > 0 and not page_file)
        yield _Row(Held(Unit(h, start, end), fetched_at, requested), missing)


def staged_window(store: StateStore, window: tuple[date, date]) -> tuple[date, date]:
    """``window`` widened to the calendar periods of every staged unit: what the dataset holds
    under them is read too, wherever they are (a job may have changed since they were staged)."""
    staged = store.staged_periods()
    if not staged:
        return window
    granularity = store.granularity
    first = period_of(granularity, staged[0]) if granularity != "range" else staged[0]
    last = period_end(granularity, period_of(granularity, staged[-1])) or staged[-1]
    return min(window[0], first), max(window[1], last)


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
        """Reconcile once (at most); write what was learnt into the state."""
        if self._found is None:
            store = self._store
            window = staged_window(store, self._window)
            found = reconcile(self._sink, store, window, store.granularity, quarantine=self._write)
            drop = found.dropped + found.unpaged
            if self._write and (found.adopted or drop or found.files or found.written):
                store.reconcile(found.adopted, drop, found.files, found.written)
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
    if found.missing_pages:
        log.warning(
            "%s: %d units asked with page statistics have no page rows in the dataset (a"
            " page_stats partition removed?): they are fetched again",
            sink.location,
            len(found.missing_pages),
        )
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
