"""Iceberg output (``format: iceberg``): both datasets as Iceberg tables, with pyiceberg.

Each dataset is an Iceberg table partitioned by ``period_start`` (identity), at
``OUTPUT/page_stats`` and ``OUTPUT/collection_stats``, named ``NAMESPACE.page_stats`` and
``NAMESPACE.collection_stats`` in a catalog (:mod:`harvester.lake.catalog`). A partition is
replaced as with Parquet (its old rows read, the units rewritten dropped, the new rows added),
and the replacement is one catalog commit per table: ``overwrite`` with the filter
``period_start = day`` writes the new data file first, then swaps the table's metadata in one
atomic step (a delete and an append snapshot, committed together). Readers of the table see the
old partition or the new one; a crash before the commit leaves only files no snapshot names.
``page_stats`` commits before ``collection_stats``, which records the unit as done.

A commit is optimistic: when another writer committed meanwhile, pyiceberg rebases ours on the
new metadata by itself where that is safe (the other commit touched other partitions); where it
touched ours, it raises, and the partition is read again from the refreshed table and rewritten
(at most :data:`COMMIT_ATTEMPTS` times), so neither writer's rows are lost.

What is done is read from the table's own metadata (the current snapshot's manifests: each
partition's live data files), never from a listing of the folder, which also holds the files
of replaced and uncommitted versions.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from harvester.errors import JobError, Problem, StorageError, UsageError
from harvester.job.location import Location
from harvester.job.model import CatalogSettings
from harvester.lake.catalog import (
    catalog_errors,
    describe,
    open_catalog,
    read_record,
    table_uri,
    write_record,
)
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import FILE_SCHEMAS, PARTITION_KEY, SCHEMAS, SORT_KEYS, UNIT_KEY
from harvester.model import Fingerprint

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

__all__ = ["COMMIT_ATTEMPTS", "DEFAULT_RETENTION_HOURS", "TABLE_PROPERTIES", "IcebergSink"]

log = logging.getLogger("harvester.iceberg")

DEFAULT_RETENTION_HOURS = 168  # as for Delta: a week of snapshots stays readable (time travel)
COMMIT_ATTEMPTS = 5  # a partition read and rewritten after a conflicting concurrent commit
# Every commit grows the table's metadata by its snapshots, and pyiceberg copies the whole
# metadata several times per commit: a partition's commit took 70 ms at first and 700 ms after
# 400 snapshots. So a run expires the snapshots it made itself (its intermediate states; the
# current one stays) once it has made this many; ``maintain`` expires whole runs' snapshots.
OWN_SNAPSHOTS_KEPT = 20
METADATA_VERSIONS_KEPT = 20  # metadata files kept beside the current one (older ones deleted)
TABLE_PROPERTIES = {
    # Each commit writes a new metadata file: keep the last few, delete the older ones.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": str(METADATA_VERSIONS_KEPT),
    "write.parquet.compression-codec": "zstd",
}
EPOCH = date(1970, 1, 1)
# The first overwrite of a partition deletes nothing, as meant: pyiceberg warns each time.
warnings.filterwarnings("ignore", "Delete operation did not match any records", UserWarning)

# A data file as the fingerprint needs it: its path, size and partition.
Entry = tuple[str, int, date]


def _conflicts() -> tuple[type[Exception], ...]:
    """The exceptions of a commit that lost to a concurrent one (nothing of it landed)."""
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    return (CommitFailedException, ValidationException)


class IcebergSink(ParquetSink):
    """The Parquet sink's partition upserts, each stored as one Iceberg commit per table.

    ``catalog``: the job's ``catalog:`` block; None reads the output's record of it (or, for a
    local output that has none, its own SQLite file).
    """

    def __init__(
        self,
        output: Path | Location,
        owners: Mapping[str, str] | None = None,
        catalog: CatalogSettings | None = None,
        *,
        granularity: str = "day",
    ) -> None:
        super().__init__(output, owners, granularity=granularity)
        recorded = None if catalog is not None else read_record(self.location, self.objects)[0]
        default = CatalogSettings() if self.location.is_local else None
        self.settings: CatalogSettings | None = catalog or recorded or default
        self._catalog: Catalog | None = None
        self._tables: dict[str, Table] = {}
        self._entries: dict[str, list[Entry]] = {}  # manifest path → its live files (immutable)
        self._recorded = False
        self._made: dict[str, list[int]] = {}  # snapshot ids this sink committed, by table
        self.retries = 0  # commits redone after a concurrent one (each also logged)

    # --- the catalog and the tables ------------------------------------------------------------

    def _settings(self) -> CatalogSettings:
        if self.settings is None:
            raise UsageError(f"{self.location}: name the Iceberg catalog (the job's catalog:)")
        return self.settings

    def catalog(self, *, create: bool = False) -> Catalog | None:
        """The catalog (opened once); None when it does not exist yet and ``create`` is off."""
        if self._catalog is None and (self.settings is not None or create):
            self._catalog = open_catalog(self._settings(), self.location, create=create)
        return self._catalog

    def table(self, name: str, *, create: bool = False) -> Table | None:
        """The dataset's table; None before it exists (``create``: make it, partitioned)."""
        table = self._tables.get(name)
        if table is not None:
            return table
        catalog = self.catalog(create=create)
        if catalog is None:
            self._refuse_unregistered(name)
            return None
        from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError

        settings = self._settings()
        ident = (settings.namespace, name)
        with catalog_errors(settings, self.location):
            try:
                table = catalog.load_table(ident)
            except NoSuchTableError:
                self._refuse_unregistered(name)
                if not create:
                    return None
                catalog.create_namespace_if_not_exists(settings.namespace)
                try:
                    table = self._create(catalog, ident, name)
                except TableAlreadyExistsError:  # another writer made it meanwhile
                    table = catalog.load_table(ident)
        self._check_location(table, name)
        self._tables[name] = table
        return table

    def _create(self, catalog: Catalog, ident: tuple[str, str], name: str) -> Table:
        """One commit: the table with its schema, its partition spec and its properties."""
        with (
            catalog.create_table_transaction(
                ident,
                schema=SCHEMAS[name],
                location=table_uri(self.location, name),
                properties=TABLE_PROPERTIES,
            ) as tx,
            tx.update_spec() as spec,
        ):
            spec.add_identity(PARTITION_KEY)
        return catalog.load_table(ident)

    def _refuse_unregistered(self, name: str) -> None:
        """A table folder with metadata but no table in this catalog: another catalog holds it
        (or this one was lost). Refused before any request, never overwritten by a new table."""
        folder = self.location.join(name, "metadata")
        selector = pafs.FileSelector(folder, allow_not_found=True)
        if any(i.path.endswith(".metadata.json") for i in self.fs.get_file_info(selector)):
            settings = self._settings()
            raise JobError(
                [
                    Problem(
                        "catalog",
                        "catalog",
                        f"{self.location}/{name} holds an Iceberg table that"
                        f" {describe(settings, self.location)} does not know as"
                        f" {settings.namespace}.{name}: point catalog: at the catalog that holds"
                        " it (see OUTPUT/_harvester/iceberg.json), or register it there"
                        " (pyiceberg's register_table, with its newest committed metadata file)",
                    )
                ]
            )

    def _check_location(self, table: Table, name: str) -> None:
        """Refuse a table of this name that lives elsewhere (two outputs, one namespace)."""
        found, expected = _normal(table.location()), _normal(table_uri(self.location, name))
        if found != expected:
            settings = self._settings()
            raise JobError(
                [
                    Problem(
                        "catalog",
                        "catalog.namespace",
                        f"{settings.namespace}.{name} in {describe(settings, self.location)}"
                        f" is the table at {found}, not this output's ({expected}): give this"
                        " output its own namespace",
                    )
                ]
            )

    def _writable(self, name: str) -> Table:
        """The table to write: made if missing, given any column the schema gained since."""
        if not self._recorded:
            settings = self._settings()
            recorded, version = read_record(self.location, self.objects)
            if recorded != settings:
                write_record(self.location, self.objects, settings, expect=version)
            self._recorded = True
        table = self.table(name, create=True)
        assert table is not None
        missing = [c for c in SCHEMAS[name].names if c not in table.schema().column_names]
        if missing:
            with catalog_errors(self._settings(), self.location), table.update_schema() as us:
                us.union_by_name(SCHEMAS[name])
            log.info("%s: %s gained the columns %s", self.location, name, ", ".join(missing))
        return table

    # --- the sink's interface ------------------------------------------------------------------

    def migrate_accounts(self) -> int:
        """Nothing to do: every Iceberg table this harvester writes has the ``account`` column."""
        return 0

    def cleanup(self) -> int:
        """Nothing to remove: files of an uncommitted write are in no snapshot."""
        return 0

    def list_parts(self, name: str) -> dict[date, Fingerprint]:
        """Each partition's live data files, from the current snapshot's manifests: their
        total size and a hash of their names (Iceberg never rewrites a file in place)."""
        table = self.table(name)
        snapshot = table.current_snapshot() if table is not None else None
        if table is None or snapshot is None:
            return {}
        files: dict[date, list[tuple[str, int]]] = {}
        with catalog_errors(self._settings(), self.location):
            for manifest in snapshot.manifests(table.io):
                for path, size, start in self._manifest_entries(table, manifest):
                    files.setdefault(start, []).append((path, size))
        return {
            start: Fingerprint(
                sum(size for _, size in entries),
                zlib.crc32("\n".join(sorted(p for p, _ in entries)).encode()),
            )
            for start, entries in files.items()
        }

    def _manifest_entries(self, table: Table, manifest: Any) -> list[Entry]:
        """A data manifest's live files, read once (a manifest is never rewritten)."""
        from pyiceberg.manifest import ManifestContent

        if manifest.content != ManifestContent.DATA:
            return []
        cached = self._entries.get(manifest.manifest_path)
        if cached is None:
            spec = table.specs()[manifest.partition_spec_id]
            names = [f.name for f in spec.fields]
            at = names.index(PARTITION_KEY)
            cached = [
                (
                    e.data_file.file_path,
                    e.data_file.file_size_in_bytes,
                    _day(e.data_file.partition[at]),
                )
                for e in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
            ]
            self._entries[manifest.manifest_path] = cached
        return cached

    def read(
        self,
        name: str,
        columns: list[str] | None = None,
        starts: Sequence[date] | None = None,
    ) -> pa.Table:
        """A table's rows at its current snapshot (``columns``; partitions in ``starts`` only),
        read through the table's scan; columns the table lacks (older tables) are null."""
        schema = SCHEMAS[name]
        columns = columns or schema.names
        wanted = pa.schema([schema.field(c) for c in columns])
        table = self.table(name)
        if table is None or (starts is not None and not starts):
            return wanted.empty_table()
        have = set(table.schema().column_names)
        present = tuple(c for c in columns if c in have)
        where = "true" if starts is None else _one_of(starts)
        with catalog_errors(self._settings(), self.location):
            rows = table.scan(row_filter=where, selected_fields=present).to_arrow()
        for field in wanted:
            if field.name not in rows.column_names:
                rows = rows.append_column(field, pa.nulls(rows.num_rows, field.type))
        return rows.select(columns).cast(wanted)

    def _upsert(self, name: str, period_start: date, rows: pa.Table, keys: pa.Table) -> int:
        """Replace the units in ``keys`` with ``rows`` in one partition: one Iceberg commit.

        A commit that lost to a concurrent one is redone from a fresh read of the partition.
        """
        if rows.num_rows == 0 and self.table(name) is None:
            return 0  # nothing to remove from a table that does not exist
        table = self._writable(name)
        before = {snapshot.snapshot_id for snapshot in table.metadata.snapshots}
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                with catalog_errors(self._settings(), self.location):
                    written = self._commit_partition(table, name, period_start, rows, keys)
                break
            except _conflicts() as exc:
                if attempt == COMMIT_ATTEMPTS:
                    raise StorageError(
                        f"{self.location}: {name} partition {period_start}: {attempt} commits"
                        f" lost to concurrent writers ({type(exc).__name__}); nothing of the"
                        " last one landed: run again"
                    ) from None
                self.retries += 1
                log.warning(
                    "%s: %s partition %s: another writer committed meanwhile (%s); read again"
                    " and rewritten (attempt %d of %d)",
                    self.location, name, period_start, type(exc).__name__, attempt + 1,
                    COMMIT_ATTEMPTS,
                )  # fmt: skip
                table.refresh()
        self._touched[(name, period_start)] = self.list_parts(name).get(period_start)
        made = self._made.setdefault(name, [])
        made.extend(s.snapshot_id for s in table.metadata.snapshots if s.snapshot_id not in before)
        if len(made) >= OWN_SNAPSHOTS_KEPT:
            self._expire_own(table, made)
        return written

    def _expire_own(self, table: Table, made: list[int]) -> None:
        """Expire the snapshots this sink made, but the table's current one (and any a branch
        or tag names); metadata only: no file is deleted, so a reader's scan still finds its
        files. A concurrent commit makes it wait for the next time."""
        protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
        ids = [i for i in made if i not in protected and table.snapshot_by_id(i) is not None]
        try:
            with catalog_errors(self._settings(), self.location):
                table.maintenance.expire_snapshots().by_ids(ids).commit()
        except _conflicts():
            table.refresh()
            return
        made[:] = [i for i in made if i in protected]

    def _commit_partition(
        self, table: Table, name: str, period_start: date, rows: pa.Table, keys: pa.Table
    ) -> int:
        """One attempt: read the partition, merge, commit (overwrite by filter, or delete)."""
        file_schema = FILE_SCHEMAS[name]
        old = self.read(name, starts=[period_start]).drop([PARTITION_KEY]).cast(file_schema)
        had_rows = old.num_rows > 0
        old = old.join(keys, keys=UNIT_KEY, join_type="left anti")
        merged = pa.concat_tables([old.select(file_schema.names), rows.cast(file_schema)])
        where = _one_of([period_start])
        if merged.num_rows == 0:
            if had_rows:
                table.delete(where)
            return 0
        merged = merged.sort_by([(k, "ascending") for k in SORT_KEYS[name]])
        column = pa.array([period_start] * merged.num_rows, pa.date32())
        full = merged.add_column(1, PARTITION_KEY, column).select(SCHEMAS[name].names)
        table.overwrite(full.cast(SCHEMAS[name]), overwrite_filter=where)
        return 1

    # --- upkeep --------------------------------------------------------------------------------

    def maintain(
        self, retention_hours: int = DEFAULT_RETENTION_HOURS, *, now: datetime | None = None
    ) -> list[str]:
        """Expire the snapshots older than the retention (the current one always stays); the
        commit also deletes metadata files beyond the table's ``previous-versions-max``."""
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(hours=retention_hours)
        lines = []
        for name in SCHEMAS:
            table = self.table(name)
            if table is None:
                continue
            before = len(table.metadata.snapshots)
            with catalog_errors(self._settings(), self.location):
                table.maintenance.expire_snapshots().older_than(cutoff).commit()
            kept = len(table.metadata.snapshots)
            lines.append(
                f"{name}: expired {before - kept} snapshots older than {retention_hours} h,"
                f" kept {kept}; metadata files beyond the last"
                f" {table.properties.get('write.metadata.previous-versions-max', '100')} deleted"
                " as the table's properties say (data files of expired snapshots stay: pyiceberg"
                " 0.12 removes no file)"
            )
        return lines


def _one_of(starts: Sequence[date]) -> str:
    """A row filter: ``period_start`` is one of ``starts`` (dates are literals pyiceberg binds)."""
    if len(starts) == 1:
        return f"{PARTITION_KEY} = '{starts[0].isoformat()}'"
    return f"{PARTITION_KEY} in ({', '.join(repr(s.isoformat()) for s in sorted(set(starts)))})"


def _day(value: Any) -> date:
    """A partition's ``period_start`` as a manifest holds it (days since 1970, or a date)."""
    return value if isinstance(value, date) else EPOCH + timedelta(days=int(value))


def _normal(uri: str) -> str:
    """A table location compared as a URI: no trailing slash, ``s3a://`` as ``s3://``."""
    uri = uri.rstrip("/")
    for alias in ("s3a://", "s3n://"):
        if uri.startswith(alias):
            uri = "s3://" + uri.removeprefix(alias)
    return uri
