"""Parquet datasets: schema, partitions, atomic commit.

Two Hive-partitioned datasets under the output folder, one file per partition::

    output/page_stats/period_start=2026-01-01/part-0.parquet
    output/collection_stats/period_start=2026-01-01/part-0.parquet

The partition value lives in the folder name only: the files hold every other column.
A partition is rewritten whole (an upsert by unit): its file is read with its version, merged,
encoded in memory and written through :mod:`harvester.lake.objects` over that version only. On
local disk that is a hidden temp file in the same folder, fsynced, then renamed over
``part-0.parquet`` once the file there is checked to be still the one merged: readers and
crashes see the old file or the new one, never a mix. Temp names start with ``.`` and do not
end in ``.parquet``, so neither pyarrow's dataset discovery nor a ``*.parquet`` glob picks one
up. An object store has no rename, but each upload is atomic: a single conditional PUT
straight to the final key (``If-Match`` the ETag merged from, ``If-None-Match: *`` for a new
partition), refused when another writer changed the partition meanwhile (exit 4). A partition
left with no rows loses its file on disk; on an object store (no conditional delete) its file
is replaced by one with no rows. Reads and listings go through pyarrow's filesystem.

Every file written or removed is remembered with its size and modification time
(:meth:`ParquetSink.take_touched`), so the state can tell later whether a partition is still
the one it wrote.

A part file that is not the dataset's Parquet (truncated, garbage, another schema) is named,
never a crash: a read that fails is retried file by file, each file read whole from the store
(so a store that fails is still the store's error) and parsed in memory; the files that do not
parse are raised as :class:`~harvester.errors.UnreadableFiles`. A run moves such a file aside
(:meth:`ParquetSink.quarantine`, into ``_harvester/quarantine/``) and treats its partition as
missing, so what it held is fetched again.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from harvester.errors import BadFile, UnreadableFiles
from harvester.job.location import Location
from harvester.lake.objects import NEW, Objects, Version, open_objects
from harvester.lake.partfiles import READ_ERRORS, Quarantined, damage, scan
from harvester.lake.schema import (
    ACCOUNT,
    COLLECTION_STATS,
    COMPRESSION,
    FILE_SCHEMAS,
    PAGE_STATS,
    PART_FILE,
    PARTITION_KEY,
    ROW_GROUP_SIZE,
    SCHEMAS,
    SORT_KEYS,
    TEMP_FILE,
    UNIT_KEY,
    PartitionWrite,
    WriteResult,
    collection_rows,
    conform,
    page_rows,
    partition_of,
    unit_keys,
)
from harvester.layout import DEFAULT_ACCOUNT, LAKE_QUARANTINE_DIR
from harvester.model import Fetched, Fingerprint, Unit

__all__ = ["ParquetSink", "PartitionWrite", "Quarantined", "WriteResult", "encode"]


def encode(rows: pa.Table) -> bytes:
    """A whole part file, in memory."""
    buffer = pa.BufferOutputStream()
    pq.write_table(rows, buffer, compression=COMPRESSION, row_group_size=ROW_GROUP_SIZE)
    return bytes(buffer.getvalue().to_pybytes())


class ParquetSink:
    """Writes whole partitions of both datasets, atomically, as upserts by unit."""

    # Partitions the committer hands over in one write_partitions call: one file each here, so
    # one at a time (a reader sees each as soon as it is complete); Delta gathers many.
    batch_partitions = 1
    batch_seconds = 0.0
    # What to do about an unreadable part file, as summary, verify and errors say it.
    unreadable_hint = (
        "`harvester run` moves it aside into _harvester/quarantine/ and fetches its partition again"
    )

    def __init__(
        self,
        output: Path | Location,
        owners: Mapping[str, str] | None = None,
        *,
        granularity: str = "day",
    ) -> None:
        self.location = output if isinstance(output, Location) else Location.local(output)
        self.fs: pafs.FileSystem = self.location.filesystem()
        self.owners: dict[str, str] = dict(owners or {})  # hash → account; else "default"
        self.granularity = granularity  # whether a window is its whole period (``complete``)
        # Files written or removed since the last take_touched(): (dataset, period) -> file.
        self._touched: dict[tuple[str, date], Fingerprint | None] = {}
        # Called before every write: raises when this run may no longer write (its lock lost).
        self.guard: Callable[[], None] = lambda: None
        # Unreadable files moved aside (all of them, for the report; the new ones, for the
        # committer, which forgets the units they held). The tag names this run's moves.
        self.quarantined: list[Quarantined] = []
        self._lost: list[Quarantined] = []
        self.quarantine_tag = uuid.uuid4().hex[:12]
        # Each part file's size as last listed or written: a read needs no request to learn it.
        self._sizes: dict[tuple[str, date], int] = {}
        self._objects: Objects | None = None

    @property
    def objects(self) -> Objects:
        """The output's objects, written over the version read; made on first use (a reader
        never needs the object-store extra)."""
        if self._objects is None:
            self._objects = open_objects(self.location, guard=lambda: self.guard())
        return self._objects

    @property
    def output(self) -> Path:
        """The local output folder (a local sink only)."""
        return self.location.path

    def _part(self, name: str, period_start: date) -> str:
        return self.location.join(name, f"{PARTITION_KEY}={period_start.isoformat()}", PART_FILE)

    def migrate_accounts(self) -> int:
        """Give the files written before the ``account`` column one, ``default`` (such an
        output had one account); return the files rewritten. A reader that takes its schema
        from the first file would otherwise drop the column from every file."""
        migrated = 0
        for name, schema in FILE_SCHEMAS.items():
            for start in sorted(self.list_parts(name)):
                target = self._part(name, start)
                try:
                    if ACCOUNT in pq.read_schema(target, filesystem=self.fs).names:
                        continue
                    found = self.objects.get(target)
                    if found is None:
                        continue
                    old = pq.read_table(pa.BufferReader(found[0]))
                except READ_ERRORS:
                    with self.fs.open_input_file(target) as fh:
                        if damage(fh.read(), name) is None:
                            raise  # the store's failure, not the file's
                    continue  # unreadable: the run's reconcile names it and sets it aside
                if ACCOUNT in old.schema.names:
                    continue
                column = pa.array([DEFAULT_ACCOUNT] * old.num_rows, pa.string())
                rows = conform(old.append_column(ACCOUNT, column), schema)
                self.objects.put(target, encode(rows), expect=found[1])
                migrated += 1
        return migrated

    def cleanup(self) -> int:
        """Remove temp files a crashed run left (the caller holds the lock); return how many.

        An object store keeps no temp files: an upload a crash cut short never became an object.
        """
        if not self.location.is_local:
            return 0
        removed = 0
        for name in SCHEMAS:
            for temp in (self.output / name).glob(f"{PARTITION_KEY}=*/{TEMP_FILE}"):
                temp.unlink(missing_ok=True)
                removed += 1
        return removed

    def list_parts(self, name: str) -> dict[date, Fingerprint]:
        """Every part file of a dataset with its size and mtime: one listing."""
        selector = pafs.FileSelector(self.location.join(name), recursive=True, allow_not_found=True)
        found: dict[date, Fingerprint] = {}
        for info in self.fs.get_file_info(selector):
            start = partition_of(info.path) if info.type == pafs.FileType.File else None
            if start is not None:
                found[start] = Fingerprint(int(info.size), int(info.mtime_ns or 0))
        self._sizes = {k: v for k, v in self._sizes.items() if k[0] != name}
        self._sizes.update({(name, start): fp.size for start, fp in found.items()})
        return found

    def take_touched(self) -> dict[tuple[str, date], Fingerprint | None]:
        """The files written (their fingerprints) or removed (None) since the last call."""
        touched, self._touched = self._touched, {}
        return touched

    def take_lost(self) -> list[Quarantined]:
        """The files moved aside while writing since the last call (their units are lost)."""
        lost, self._lost = self._lost, []
        return lost

    # --- unreadable files ----------------------------------------------------------------------

    def files_of(self, name: str, starts: Iterable[date] | None) -> list[tuple[date, str]]:
        """The part files of these partitions (every partition's when None), by partition."""
        listed = self.list_parts(name)
        chosen = sorted(listed) if starts is None else sorted(set(starts) & listed.keys())
        return [(start, self._part(name, start)) for start in chosen]

    def unreadable(self, name: str, starts: Iterable[date] | None = None) -> list[BadFile]:
        """The part files of these partitions that do not parse as the dataset's Parquet.

        Each is read whole first: a store that fails raises OSError as it would anyway.
        """
        found = []
        for start, path in self.files_of(name, starts):
            with self.fs.open_input_file(path) as fh:
                body = fh.read()
            reason = damage(body, name)
            if reason is not None:
                found.append(BadFile(name, start, path, reason))
        return found

    def _read_checked(
        self, name: str, starts: Sequence[date] | None, read: Callable[[], pa.Table]
    ) -> pa.Table:
        """``read()``; when it fails, the unreadable files named (UnreadableFiles), or the
        store's own error raised as it was."""
        try:
            return read()
        except READ_ERRORS as exc:
            bad = self.unreadable(name, starts)
            if bad:
                raise UnreadableFiles(bad, self.unreadable_hint) from exc
            raise

    def quarantine(self, bad: BadFile) -> str:
        """Move an unreadable part file aside into ``_harvester/quarantine/`` (the caller holds
        the lock); return where it went. Its partition is missing from then on (on an object
        store, which has no conditional delete, it holds a file with no rows)."""
        found = self.objects.get(bad.path)
        if found is None:
            return ""  # gone meanwhile: nothing to set aside
        data, version = found
        moved = self._keep(bad, data)
        self._empty(bad.dataset, bad.period_start, bad.path, version)
        return moved

    def _keep(self, bad: BadFile, data: bytes) -> str:
        """A copy of an unreadable file's bytes in the quarantine, as a new object."""
        target = self._quarantine_path(bad)
        self.objects.put(target, data, expect=NEW)
        self.quarantined.append(Quarantined(bad, target))
        return target

    def _quarantine_path(self, bad: BadFile) -> str:
        """``_harvester/quarantine/`` + the file's path under the output + this run's tag."""
        root = self.location.join("")
        relative = bad.path[len(root) :].lstrip("/") if bad.path.startswith(root) else bad.path
        relative = relative.replace(os.sep, "/")
        return self.location.join(*LAKE_QUARANTINE_DIR.split("/"), *relative.split("/")) + (
            f".{self.quarantine_tag}"
        )

    def read(
        self,
        name: str,
        columns: list[str] | None = None,
        starts: Sequence[date] | None = None,
    ) -> pa.Table:
        """A dataset's rows (``columns`` only; the partitions in ``starts`` only), unsorted."""
        schema = SCHEMAS[name]
        columns = columns or schema.names
        if starts is None:
            starts = sorted(self.list_parts(name))
        files = [(self._part(name, s), self._sizes.get((name, s)), s) for s in starts]
        if not files:
            return pa.schema([schema.field(c) for c in columns]).empty_table()
        return self._read_checked(
            name, starts, lambda: scan(files, schema, self.fs).to_table(columns=columns)
        )

    def write_partition(
        self, period_start: date, results: Sequence[Fetched], replaced: Sequence[Unit] = ()
    ) -> WriteResult:
        """Upsert ``results`` (units starting on ``period_start``) into both datasets.

        ``replaced``: older windows of the same calendar periods, whose rows go, in this
        partition or in whichever one holds them. This partition is written first, so a
        reader never finds a period missing (at worst, for a moment, both of its windows).
        Page statistics are written before collection statistics, which record a unit as done.
        """
        self.guard()
        strays = [r.unit for r in results if r.unit.start != period_start]
        if strays:
            raise ValueError(f"units outside partition {period_start}: {strays[0]} ...")
        # The last answer for a unit wins, as it would across two calls.
        latest = list({r.unit: r for r in results}.values())
        if not latest:
            return WriteResult(0, 0, 0)
        pages = page_rows(latest, self.owners)
        collections = collection_rows(latest, self.owners, self.granularity)
        here = [u for u in replaced if u.start == period_start]
        keys = pa.concat_tables([collections.select(UNIT_KEY), unit_keys(here)])
        files = self._upsert(PAGE_STATS, period_start, pages, keys)
        files += self._upsert(COLLECTION_STATS, period_start, collections, keys)
        files += self.remove([u for u in replaced if u.start != period_start])
        return WriteResult(pages.num_rows, collections.num_rows, files)

    def write_partitions(self, writes: Sequence[PartitionWrite]) -> WriteResult:
        """:meth:`write_partition` for each write, in order (Delta commits them together)."""
        total = WriteResult(0, 0, 0)
        for w in writes:
            done = self.write_partition(w.period_start, w.results, w.replaced)
            total = WriteResult(*(a + b for a, b in zip(total, done, strict=True)))
        return total

    def remove(self, units: Sequence[Unit]) -> int:
        """Delete the rows of ``units`` from both datasets; return the files written."""
        self.guard()
        files = 0
        for start in sorted({u.start for u in units}):
            keys = unit_keys([u for u in units if u.start == start])
            for name, schema in FILE_SCHEMAS.items():
                files += self._upsert(name, start, schema.empty_table(), keys)
        return files

    def units(self, name: str = COLLECTION_STATS) -> pa.Table:
        """The unit keys a dataset holds: collection_hash, period_start, period_end, fetched_at.

        Reads only those columns (for ``page_stats``, one row per page).
        """
        return self.read(name, ["collection_hash", PARTITION_KEY, "period_end", "fetched_at"])

    def _upsert(self, name: str, period_start: date, rows: pa.Table, keys: pa.Table) -> int:
        """Replace the units in ``keys`` with ``rows`` in one partition; return files written.

        The partition is read with its version and written over that version only: when
        another writer changed it meanwhile, WriteConflict (exit 4) and nothing is written.
        """
        target = self._part(name, period_start)
        found = self.objects.get(target)
        expect = NEW
        if found is not None:
            data, expect = found
            old = self._old_rows(name, period_start, target, data, rows.schema)
            # Every row of a rewritten unit goes, so pages missing from the new answer vanish.
            old = old.join(keys, keys=UNIT_KEY, join_type="left anti")
            rows = pa.concat_tables([old.select(rows.schema.names), rows])
        if rows.num_rows == 0:
            if found is not None:
                self._empty(name, period_start, target, expect)
            return 0
        rows = rows.sort_by([(k, "ascending") for k in SORT_KEYS[name]])
        body = encode(rows)
        version = self.objects.put(target, body, expect=expect)
        self._touched[(name, period_start)] = self.objects.fingerprint(target, version)
        self._sizes[(name, period_start)] = len(body)
        return 1

    def _old_rows(
        self, name: str, period_start: date, target: str, data: bytes, schema: pa.Schema
    ) -> pa.Table:
        """The rows a partition file's bytes hold; none when they are unreadable (a copy then
        goes to the quarantine and its units are reported lost: the committer has them
        fetched again; the write replaces the file)."""
        try:
            return conform(pq.read_table(pa.BufferReader(data)), schema)
        except READ_ERRORS:
            reason = damage(data, name)
            if reason is None:
                raise
        self._keep(BadFile(name, period_start, target, reason), data)
        self._lost.append(self.quarantined[-1])
        return schema.empty_table()

    def _empty(self, name: str, period_start: date, target: str, expect: Version) -> None:
        """A partition left with no rows: its file goes, or (no conditional delete on an object
        store) holds no rows."""
        if self.objects.deletes:
            self.objects.delete(target, expect=expect)
            self._touched[(name, period_start)] = None
            self._sizes.pop((name, period_start), None)
            return
        empty = encode(FILE_SCHEMAS[name].empty_table())
        version = self.objects.put(target, empty, expect=expect)
        self._touched[(name, period_start)] = self.objects.fingerprint(target, version)
        self._sizes[(name, period_start)] = len(empty)
