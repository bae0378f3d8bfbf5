"""Delta Lake output (``format: delta``): both datasets as Delta tables, with the deltalake package.

Each dataset is a Delta table partitioned by ``period_start`` (``OUTPUT/page_stats``,
``OUTPUT/collection_stats``). Partitions are replaced as with Parquet (their old rows read, the
units rewritten dropped, the new rows added), but many partitions at once and in one Delta
commit per table: the new data files are written first, under new names (one per partition,
zstd, by pyarrow), then a single log entry removes the partitions' old files and adds the new
ones (``create_write_transaction(mode="overwrite", partition_filters=…)``). A reader
(deltalake, Polars, DuckDB's delta extension, Spark) sees the table's last version, never a
half-replaced partition; a crash before the commit leaves only unreferenced files, which
``harvester maintain`` vacuums. ``page_stats`` commits before ``collection_stats``, which
records the units as done; the state marks them done only after both commits, so a kill at
any moment leaves them staged and the next run writes them again, exactly.

The committer hands over up to :attr:`DeltaSink.batch_partitions` complete partitions at a time
(or what completed within :attr:`DeltaSink.batch_seconds`): a year's backfill is a few dozen
commits, not hundreds, and the log a reader replays stays short. Each partition's fingerprint
(for "the dataset is the record") comes from the commit's own add actions, not from listing.

delta-rs has its own storage layer for the log: it gets the same endpoint and region as
pyarrow (the job's ``storage:`` block, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
``AWS_REGION``); credentials it reads from the standard AWS variables itself. Data files are
read and written through the run's one pyarrow filesystem.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from harvester.errors import BadFile, BrokenDeltaLog, StorageError, UnreadableFiles, UsageError
from harvester.job.location import Location, storage_env
from harvester.lake.delta_log import broken_log_entry
from harvester.lake.objects import NEW
from harvester.lake.parquet import ParquetSink, encode
from harvester.lake.partfiles import Quarantined, scan
from harvester.lake.schema import (
    COLLECTION_STATS,
    COMPRESSION,
    FILE_SCHEMAS,
    PAGE_STATS,
    PARTITION_KEY,
    SCHEMAS,
    SORT_KEYS,
    PartitionWrite,
    WriteResult,
    collection_rows,
    conform,
    page_rows,
)
from harvester.model import Fetched, Fingerprint, Unit
from harvester.redact import redact

__all__ = ["DEFAULT_RETENTION_HOURS", "DeltaSink", "delta_storage_options"]

DEFAULT_RETENTION_HOURS = 168  # Delta's own default: a week of old versions stays readable
BATCH_PARTITIONS = 64  # partitions per commit, at most
BATCH_SECONDS = 30.0  # and no partition waits longer than this for its commit
# A checkpoint every 10 commits (Delta's default is 100): opening a table replays at most ten
# log entries, so what a run reads of the log does not grow with the table's history.
TABLE_CONFIGURATION = {"delta.checkpointInterval": "10"}
ROW_KEY = ["collection_hash", PARTITION_KEY, "period_end"]  # a unit, across partitions


def _deltalake() -> Any:
    try:
        import deltalake
        import deltalake.exceptions
        import deltalake.transaction
    except ImportError:
        raise UsageError(
            "format: delta needs the delta extra (pip install 'harvester[delta]')"
        ) from None
    return deltalake


def fingerprint(files: Iterable[tuple[str, int]]) -> Fingerprint:
    """A partition's live files as one fingerprint: total size and a hash of their names.

    Delta never rewrites a file in place, so the set of names identifies the content.
    """
    entries = list(files)
    names = "\n".join(sorted(path for path, _ in entries))
    return Fingerprint(sum(size for _, size in entries), zlib.crc32(names.encode()))


class DeltaSink(ParquetSink):
    """The Parquet sink's partition upserts, many partitions to one Delta commit per dataset."""

    batch_partitions = BATCH_PARTITIONS
    batch_seconds = BATCH_SECONDS
    # The log lists files by name and size, so a file damaged in place looks unchanged to a
    # run that trusts its state: a run with a new state reads every partition.
    unreadable_hint = (
        "the table's log still lists it: `harvester run JOB --state NEW_PATH` reads every"
        " partition, takes this one out of the table (a copy goes to _harvester/quarantine/)"
        " and fetches it again"
    )

    def __init__(
        self,
        output: Path | Location,
        owners: Mapping[str, str] | None = None,
        *,
        granularity: str = "day",
    ) -> None:
        super().__init__(output, owners, granularity=granularity)
        self._delta = _deltalake()
        self.storage_options = delta_storage_options(self.location)
        self._tables: dict[str, Any] = {}

    def migrate_accounts(self) -> int:
        """Nothing to do: every Delta table this harvester writes has the ``account`` column."""
        return 0

    def uri(self, name: str) -> str:
        """The table's URI as deltalake takes it."""
        if self.location.is_local:
            return str(Path(self.location.join(name)).absolute())
        return f"{self.location.scheme}://{self.location.join(name)}"

    def table(self, name: str) -> Any:
        """The dataset's DeltaTable, None before the first commit.

        Loaded once; this sink's own commits bring it up to date (the run holds the lock, so
        nobody else commits meanwhile), so reading it costs no listing of the log.
        """
        table = self._tables.get(name)
        if table is not None:
            return table
        with self._delta_errors(name):
            try:
                table = self._delta.DeltaTable(self.uri(name), storage_options=self.storage_options)
            except self._delta.exceptions.TableNotFoundError:
                return None
        self._tables[name] = table
        return table

    def cleanup(self) -> int:
        """Nothing to remove: files of an uncommitted write are invisible (vacuum takes them)."""
        return 0

    def _live_files(self, name: str) -> dict[date, list[tuple[str, int]]]:
        """Each partition's live data files (path in the table, size), from the log."""
        table = self.table(name)
        if table is None:
            return {}
        with self._delta_errors(name):
            actions = pa.table(table.get_add_actions(flatten=True))
        files: dict[date, list[tuple[str, int]]] = {}
        for path, size, start in zip(
            actions["path"].to_pylist(),
            actions["size_bytes"].to_pylist(),
            actions[f"partition.{PARTITION_KEY}"].to_pylist(),
            strict=True,
        ):
            files.setdefault(start, []).append((path, size))
        return files

    def list_parts(self, name: str) -> dict[date, Fingerprint]:
        """Each partition's live files, from the table's log: total size and a hash of names."""
        return {start: fingerprint(entries) for start, entries in self._live_files(name).items()}

    def files_of(self, name: str, starts: Iterable[date] | None) -> list[tuple[date, str]]:
        """The live data files of these partitions (every partition's when None)."""
        live = self._live_files(name)
        chosen = sorted(live) if starts is None else sorted(set(starts) & live.keys())
        return [
            (start, self.location.join(name, *unquote(path).split("/")))
            for start in chosen
            for path, _ in live[start]
        ]

    def read(
        self,
        name: str,
        columns: list[str] | None = None,
        starts: Sequence[date] | None = None,
    ) -> pa.Table:
        """A table's rows at its latest version (``columns``; partitions in ``starts`` only)."""
        schema = SCHEMAS[name]
        columns = columns or schema.names
        wanted = pa.schema([schema.field(c) for c in columns])
        table = self.table(name)
        if table is None or (starts is not None and not starts):
            return wanted.empty_table()
        if not _plain(table):  # written by another engine with features we do not read
            return conform(self._read_by_deltalake(name, table, columns, starts), wanted)
        live = self._live_files(name)
        chosen = sorted(live) if starts is None else [s for s in starts if s in live]
        files = [
            (self.location.join(name, *unquote(path).split("/")), size, start)
            for start in chosen
            for path, size in live[start]
        ]
        if not files:
            return wanted.empty_table()
        return self._read_checked(
            name, starts, lambda: scan(files, schema, self.fs).to_table(columns=columns)
        ).cast(wanted)  # files from before a column existed read it as null (the scan's schema)

    def _read_by_deltalake(
        self, name: str, table: Any, columns: list[str], starts: Sequence[date] | None
    ) -> pa.Table:
        """A table's rows through deltalake's own dataset (a table with reader features)."""
        pruning = None
        if starts is not None:
            pruning = [(PARTITION_KEY, "in", [s.isoformat() for s in starts])]
        files = pafs.SubTreeFileSystem(self.location.join(name), self.fs)

        def read_files() -> pa.Table:
            with self._delta_errors(name):
                dataset = table.to_pyarrow_dataset(filesystem=files, file_pruning_predicate=pruning)
            present = set(dataset.schema.names)  # a column newer than the table reads as null
            return dataset.to_table(columns=[c for c in columns if c in present])

        return self._read_checked(name, starts, read_files)

    # --- writing -------------------------------------------------------------------------------

    def write_partition(
        self, period_start: date, results: Sequence[Fetched], replaced: Sequence[Unit] = ()
    ) -> WriteResult:
        """Upsert one partition's ``results`` (older windows in ``replaced`` go): one commit
        per dataset, as :meth:`write_partitions` does for many."""
        return self.write_partitions([PartitionWrite(period_start, results, replaced)])

    def write_partitions(self, writes: Sequence[PartitionWrite]) -> WriteResult:
        """Upsert every write's results, and remove the older windows each replaces, in one
        Delta commit per dataset (``page_stats`` first)."""
        self.guard()
        for w in writes:
            strays = [r.unit for r in w.results if r.unit.start != w.period_start]
            if strays:
                raise ValueError(f"units outside partition {w.period_start}: {strays[0]} ...")
        # The last answer for a unit wins, as it would across two calls.
        latest = list({r.unit: r for w in writes for r in w.results}.values())
        gone = [u for w in writes for u in w.replaced]
        if not latest and not gone:
            return WriteResult(0, 0, 0)
        starts = sorted({r.unit.start for r in latest} | {u.start for u in gone})
        drop = _row_keys([r.unit for r in latest] + gone)
        pages = _with_partition(page_rows(latest, self.owners), latest, PAGE_STATS)
        collections = _with_partition(
            collection_rows(latest, self.owners, self.granularity), latest, None
        )
        files = self._replace_partitions(PAGE_STATS, starts, pages, drop)
        files += self._replace_partitions(COLLECTION_STATS, starts, collections, drop)
        return WriteResult(pages.num_rows, collections.num_rows, files)

    def remove(self, units: Sequence[Unit]) -> int:
        """Delete the rows of ``units`` from both tables; return the files written."""
        if not units:
            return 0
        first = min(u.start for u in units)
        return self.write_partitions([PartitionWrite(first, (), units)]).files

    def _replace_partitions(
        self, name: str, starts: list[date], rows: pa.Table, drop: pa.Table
    ) -> int:
        """Rewrite these partitions of one table: their old rows but ``drop``'s units, plus
        ``rows``; one commit. Return the data files written."""
        old = self._rows_before(name, starts).join(drop, keys=ROW_KEY, join_type="left anti")
        full = pa.concat_tables([old.select(rows.schema.names), rows])
        adds = []
        touched: dict[tuple[str, date], Fingerprint | None] = {}
        for start in starts:
            here = full.filter(pc.equal(full[PARTITION_KEY], pa.scalar(start, pa.date32())))
            touched[(name, start)] = None  # a partition left without rows loses its files
            if here.num_rows:
                add = self._write_file(name, start, here)
                adds.append(add)
                touched[(name, start)] = fingerprint([(add.path, add.size)])
        self._commit(name, starts, adds)
        self._touched.update(touched)
        return len(adds)

    def _rows_before(self, name: str, starts: list[date]) -> pa.Table:
        """The rows these partitions hold; an unreadable file's partition counts as empty
        (its file goes with the commit; a copy is kept in the quarantine, its units lost)."""
        readable = list(starts)
        while True:
            try:
                return self.read(name, starts=readable)
            except UnreadableFiles as exc:
                for bad in exc.files:
                    self._lost.append(self._keep_copy(bad))
                broken = {bad.period_start for bad in exc.files}
                readable = [s for s in readable if s not in broken]

    def _write_file(self, name: str, start: date, rows: pa.Table) -> Any:
        """One partition's rows as a new data file (not yet in the table): its add action."""
        rows = rows.sort_by([(k, "ascending") for k in SORT_KEYS[name]])
        body = encode(rows.drop([PARTITION_KEY]).cast(FILE_SCHEMAS[name]))
        relative = (
            f"{PARTITION_KEY}={start.isoformat()}/part-{uuid.uuid4().hex}.{COMPRESSION}.parquet"
        )
        # A new name, as a new object (fenced: the guard first; durable on local disk).
        self.objects.put(self.location.join(name, *relative.split("/")), body, expect=NEW)
        stats = json.dumps({"numRecords": rows.num_rows})
        return self._delta.transaction.AddAction(
            relative,
            len(body),
            {PARTITION_KEY: start.isoformat()},
            int(time.time() * 1000),  # the file's own mtime, as Delta writers record it
            True,
            stats,
        )

    def _commit(self, name: str, starts: list[date], adds: list[Any]) -> None:
        """One log entry: these partitions' old files out, ``adds`` in."""
        table = self.table(name)
        schema = self._delta.Schema.from_arrow(SCHEMAS[name])
        self.guard()
        with self._delta_errors(name):
            if table is None:
                if not adds:
                    return
                self._delta.transaction.create_table_with_add_actions(
                    self.uri(name),
                    schema,
                    adds,
                    mode="append",
                    partition_by=[PARTITION_KEY],
                    configuration=TABLE_CONFIGURATION,
                    storage_options=self.storage_options,
                )
                return
            table.create_write_transaction(
                adds,
                mode="overwrite",
                schema=schema,
                partition_by=[PARTITION_KEY],
                partition_filters=[(PARTITION_KEY, "in", [s.isoformat() for s in starts])],
            )
            table.update_incremental()  # one commit to read: the one just made

    def _keep_copy(self, bad: BadFile) -> Quarantined:
        """A copy of an unreadable data file in the quarantine (the table still names the
        original until the partition's next commit, which removes it)."""
        with self.fs.open_input_file(bad.path) as fh:
            self._keep(bad, fh.read())
        return self.quarantined[-1]

    def quarantine(self, bad: BadFile) -> str:
        """Take an unreadable data file's partition out of the table (one commit; the file
        is copied into ``_harvester/quarantine/``); return where the copy went."""
        moved = self._keep_copy(bad)
        self._commit(bad.dataset, [bad.period_start], [])
        self._touched[(bad.dataset, bad.period_start)] = None
        return moved.moved_to

    # --- errors and upkeep --------------------------------------------------------------------

    @contextlib.contextmanager
    def _delta_errors(self, name: str) -> Iterator[None]:
        """deltalake's errors as ours: a broken log entry named, anything else the store's."""
        try:
            yield
        except self._delta.exceptions.DeltaError as exc:
            text = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            broken = None
            if "json" in text.lower():
                broken = broken_log_entry(self.fs, self.location, name)
            if broken is not None:
                raise BrokenDeltaLog(broken) from None
            raise StorageError(
                f"{self.uri(name)}: the Delta table cannot be used: {text}"
            ) from None

    def maintain(self, retention_hours: int = DEFAULT_RETENTION_HOURS) -> list[str]:
        """Compact small files, then vacuum files no version younger than the retention needs."""
        lines = []
        for name in SCHEMAS:
            table = self.table(name)
            if table is None:
                continue
            with self._delta_errors(name):
                compacted = table.optimize.compact()
                removed = table.vacuum(
                    retention_hours=retention_hours,
                    dry_run=False,
                    enforce_retention_duration=False,
                )
            lines.append(
                f"{name}: compacted {compacted['numFilesRemoved']} files into"
                f" {compacted['numFilesAdded']}; vacuumed {len(removed)} files older than"
                f" {retention_hours} h no version needs (version {table.version()})"
            )
        return lines


def _plain(table: Any) -> bool:
    """Whether a table's data is its add actions' files as they are (no reader features:
    no deletion vectors, no column mapping), so they can be read as plain Parquet."""
    protocol = table.protocol()
    return protocol.min_reader_version <= 1 and not protocol.reader_features


def _row_keys(units: Sequence[Unit]) -> pa.Table:
    """The (collection_hash, period_start, period_end) keys of ``units``."""
    return pa.table(
        {
            "collection_hash": pa.array([u.collection_hash for u in units], pa.string()),
            PARTITION_KEY: pa.array([u.start for u in units], pa.date32()),
            "period_end": pa.array([u.end for u in units], pa.date32()),
        }
    )


def _with_partition(rows: pa.Table, results: Sequence[Fetched], name: str | None) -> pa.Table:
    """File rows with their partition column, in the table's column order."""
    if name == PAGE_STATS:
        starts = [r.unit.start for r in results for _ in r.pages]
        schema = SCHEMAS[PAGE_STATS]
    else:
        starts = [r.unit.start for r in results]
        schema = SCHEMAS[COLLECTION_STATS]
    column = pa.array(starts, pa.date32())
    return rows.add_column(1, PARTITION_KEY, column).select(schema.names).cast(schema)


def delta_storage_options(location: Location) -> dict[str, str]:
    """What delta-rs needs beyond the standard AWS variables: the endpoint and the region."""
    if location.scheme != "s3":
        return {}
    found = storage_env(location)
    options: dict[str, str] = {}
    if "endpoint" in found:
        options["AWS_ENDPOINT_URL"] = found["endpoint"]
        if found["endpoint"].startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if "region" in found:
        options["AWS_REGION"] = found["region"]
    return options
