"""Delta Lake output (``format: delta``): both datasets as Delta tables, with the deltalake package.

Each dataset is a Delta table partitioned by ``period_start`` (``OUTPUT/page_stats``,
``OUTPUT/collection_stats``). A partition is replaced as with Parquet (its old rows read, the
units rewritten dropped, the new rows added), but the replacement is one Delta commit
(``write_deltalake(mode="overwrite", predicate="period_start = '…'")``): the new data files are
written first, under new names, and the commit that swaps them in is a single log entry. A
reader (deltalake, Polars, DuckDB's delta extension, Spark) sees the table's last version, never
a half-replaced partition; a crash before the commit leaves only unreferenced files, which
``harvester maintain`` vacuums. ``page_stats`` commits before ``collection_stats``, which
records the unit as done.

delta-rs has its own storage layer: it gets the same endpoint and region as pyarrow (the job's
``storage:`` block, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_REGION``); credentials
it reads from the standard AWS variables itself.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from harvester.errors import UsageError
from harvester.job.location import Location, storage_env
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import (
    FILE_SCHEMAS,
    PARTITION_KEY,
    SCHEMAS,
    SORT_KEYS,
    UNIT_KEY,
    conform,
)
from harvester.model import Fingerprint

__all__ = ["DEFAULT_RETENTION_HOURS", "DeltaSink"]

DEFAULT_RETENTION_HOURS = 168  # Delta's own default: a week of old versions stays readable


def _deltalake() -> Any:
    try:
        import deltalake
    except ImportError:
        raise UsageError(
            "format: delta needs the delta extra (pip install 'harvester[delta]')"
        ) from None
    return deltalake


class DeltaSink(ParquetSink):
    """The Parquet sink's partition upserts, each stored as one Delta commit per dataset."""

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
        """The dataset's DeltaTable at its latest version, None before the first commit.

        Loaded once, then brought up to date with the commits since (one listing of the log),
        so a run's hundreds of commits do not replay the whole log each time.
        """
        table = self._tables.get(name)
        if table is not None:
            table.update_incremental()
            return table
        log = self.fs.get_file_info(self.location.join(name, "_delta_log"))
        if log.type != pafs.FileType.Directory:
            return None
        table = self._delta.DeltaTable(self.uri(name), storage_options=self.storage_options)
        self._tables[name] = table
        return table

    def cleanup(self) -> int:
        """Nothing to remove: files of an uncommitted write are invisible (vacuum takes them)."""
        return 0

    def list_parts(self, name: str) -> dict[date, Fingerprint]:
        """Each partition's live files, from the table's log: total size and a hash of names."""
        table = self.table(name)
        if table is None:
            return {}
        actions = pa.table(table.get_add_actions(flatten=True))
        files: dict[date, list[tuple[str, int]]] = {}
        for path, size, start in zip(
            actions["path"].to_pylist(),
            actions["size_bytes"].to_pylist(),
            actions[f"partition.{PARTITION_KEY}"].to_pylist(),
            strict=True,
        ):
            files.setdefault(start, []).append((path, size))
        # Delta never rewrites a file in place: the set of names identifies the content.
        return {
            start: Fingerprint(
                sum(size for _, size in entries),
                zlib.crc32("\n".join(sorted(p for p, _ in entries)).encode()),
            )
            for start, entries in files.items()
        }

    def read(
        self,
        name: str,
        columns: list[str] | None = None,
        starts: Sequence[date] | None = None,
    ) -> pa.Table:
        """A table's rows at its latest version (``columns``; partitions in ``starts`` only)."""
        schema = SCHEMAS[name]
        columns = columns or schema.names
        table = self.table(name)
        if table is None or (starts is not None and not starts):
            return pa.schema([schema.field(c) for c in columns]).empty_table()
        filters = None
        if starts is not None:
            filters = [(PARTITION_KEY, "in", [s.isoformat() for s in starts])]
        # A table created before a column existed lacks it until its first write: null there.
        present = {field.name for field in table.schema().fields}
        rows = table.to_pyarrow_table(columns=[c for c in columns if c in present], filters=filters)
        return conform(rows, pa.schema([schema.field(c) for c in columns]))

    def _upsert(self, name: str, period_start: date, rows: pa.Table, keys: pa.Table) -> int:
        """Replace the units in ``keys`` with ``rows`` in one partition: one Delta commit."""
        file_schema = FILE_SCHEMAS[name]
        old = conform(self.read(name, starts=[period_start]), file_schema)
        had_rows = old.num_rows > 0
        old = old.join(keys, keys=UNIT_KEY, join_type="left anti")
        rows = pa.concat_tables([old.select(file_schema.names), conform(rows, file_schema)])
        predicate = f"{PARTITION_KEY} = '{period_start.isoformat()}'"
        if rows.num_rows == 0:
            if had_rows:
                self.guard()  # right before the commit: no commit once the lease is gone
                self.table(name).delete(predicate)
                self._touched[(name, period_start)] = None
            return 0
        rows = rows.sort_by([(k, "ascending") for k in SORT_KEYS[name]])
        column = pa.array([period_start] * rows.num_rows, pa.date32())
        full = rows.add_column(1, PARTITION_KEY, column).select(SCHEMAS[name].names)
        table = self._tables.get(name)
        self.guard()  # right before the commit: no commit once the lease is gone
        self._delta.write_deltalake(
            table if table is not None else self.uri(name),
            full,
            partition_by=[PARTITION_KEY],
            mode="overwrite",
            predicate=predicate,
            schema_mode="merge",  # a table from before a column existed gains it here
            storage_options=self.storage_options,
        )
        self._touched[(name, period_start)] = self.list_parts(name).get(period_start)
        return 1

    def maintain(self, retention_hours: int = DEFAULT_RETENTION_HOURS) -> list[str]:
        """Compact small files, then vacuum files no version younger than the retention needs."""
        lines = []
        for name in SCHEMAS:
            table = self.table(name)
            if table is None:
                continue
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
