"""The datasets' shape: their names, Arrow schemas, partitioning and how rows are built.

Two Hive-partitioned datasets, ``page_stats`` and ``collection_stats``, partitioned by
``period_start``. Every writer (Parquet, Delta) builds its rows and reads its keys through
here, so a new column is added in one place.

Columns are only ever added, at the end (``account``; then ``complete``, ``pages_requested``
and ``page_count`` in ``collection_stats``, output schema version 2). A file written before a
column existed lacks it: readers see null there (:func:`conform`), and the file gets the column
when a run next rewrites its partition (its old rows keep null: what they did not record is not
invented). Null in ``pages_requested`` means "written before it was recorded": readers then
fall back to whether ``page_stats`` holds rows for the unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import NamedTuple

import pyarrow as pa
import pyarrow.dataset as ds

from harvester.layout import DEFAULT_ACCOUNT
from harvester.model import Fetched, Unit, is_complete

__all__ = [
    "COLLECTION_SCHEMA",
    "COLLECTION_STATS",
    "DATASETS",
    "FILE_SCHEMAS",
    "PAGE_SCHEMA",
    "PAGE_STATS",
    "PARTITION_KEY",
    "SCHEMAS",
    "SORT_KEYS",
    "UNIT_KEY",
    "PartitionWrite",
    "WriteResult",
    "collection_rows",
    "conform",
    "page_rows",
    "partition_of",
    "partitioning",
    "unit_keys",
]

PAGE_STATS = "page_stats"
COLLECTION_STATS = "collection_stats"
PARTITION_KEY = "period_start"
PART_FILE = "part-0.parquet"
TEMP_FILE = ".part-0.parquet.tmp"  # hidden from dataset discovery, not matched by *.parquet
COMPRESSION = "zstd"
ROW_GROUP_SIZE = 128 * 1024
UNIT_KEY = ["collection_hash", "period_end"]  # a unit, within one partition

FETCHED_AT = pa.timestamp("us", tz="UTC")

PAGE_SCHEMA = pa.schema(
    [
        ("collection_hash", pa.string()),
        ("period_start", pa.date32()),
        ("period_end", pa.date32()),
        ("page", pa.int32()),
        ("views", pa.int64()),
        ("clicks", pa.int64()),
        ("time_spent", pa.int64()),
        ("fetched_at", FETCHED_AT),
        ("account", pa.string()),
    ]
)
COLLECTION_SCHEMA = pa.schema(
    [
        ("collection_hash", pa.string()),
        ("period_start", pa.date32()),
        ("period_end", pa.date32()),
        ("impressions", pa.int64()),
        ("views", pa.int64()),
        ("time_spent", pa.int64()),
        ("downloads", pa.int64()),
        ("fetched_at", FETCHED_AT),
        ("account", pa.string()),
        # Output schema version 2: whether the window is its whole calendar period, whether
        # pages were asked for, and how many came (0: asked, none came, e.g. nobody opened it).
        ("complete", pa.bool_()),
        ("pages_requested", pa.bool_()),
        ("page_count", pa.int32()),
    ]
)
ACCOUNT = "account"  # the account's name; outputs written before it are migrated to "default"
# What a file holds: everything but the partition column.
PAGE_FILE_SCHEMA = PAGE_SCHEMA.remove(PAGE_SCHEMA.get_field_index(PARTITION_KEY))
COLLECTION_FILE_SCHEMA = COLLECTION_SCHEMA.remove(COLLECTION_SCHEMA.get_field_index(PARTITION_KEY))

SCHEMAS = {PAGE_STATS: PAGE_SCHEMA, COLLECTION_STATS: COLLECTION_SCHEMA}
DATASETS = tuple(SCHEMAS)
FILE_SCHEMAS = {PAGE_STATS: PAGE_FILE_SCHEMA, COLLECTION_STATS: COLLECTION_FILE_SCHEMA}
SORT_KEYS = {
    PAGE_STATS: ["collection_hash", "period_end", "page"],
    COLLECTION_STATS: ["collection_hash", "period_end"],
}


class PartitionWrite(NamedTuple):
    """One partition's share of a write: its answers, and older windows whose rows go."""

    period_start: date
    results: Sequence[Fetched]
    replaced: Sequence[Unit] = ()


class WriteResult(NamedTuple):
    """What one write_partition call wrote: rows of its units, and files written."""

    page_rows: int
    collection_rows: int
    files: int


def partitioning() -> ds.Partitioning:
    """The datasets' Hive partitioning: ``period_start=YYYY-MM-DD`` as date32."""
    return ds.partitioning(pa.schema([(PARTITION_KEY, pa.date32())]), flavor="hive")


def page_rows(results: Sequence[Fetched], owners: Mapping[str, str]) -> pa.Table:
    """One row per returned page (all-zero pages included), built column-wise."""
    owner = [i for i, r in enumerate(results) for _ in r.pages]
    pages = [p for r in results for p in r.pages]
    page, views, clicks, time_spent = zip(*pages, strict=True) if pages else ((),) * 4
    units = unit_columns(results, owners).take(pa.array(owner, pa.int64()))
    return pa.Table.from_arrays(
        [
            units["collection_hash"],
            units["period_end"],
            pa.array(page, pa.int32()),
            pa.array(views, pa.int64()),
            pa.array(clicks, pa.int64()),
            pa.array(time_spent, pa.int64()),
            units["fetched_at"],
            units[ACCOUNT],
        ],
        schema=PAGE_FILE_SCHEMA,
    )


def collection_rows(
    results: Sequence[Fetched], owners: Mapping[str, str], granularity: str
) -> pa.Table:
    """One row per unit, also when it has no pages or no traffic."""
    units = unit_columns(results, owners)
    complete = [is_complete(granularity, r.unit.start, r.unit.end) for r in results]
    return pa.Table.from_arrays(
        [
            units["collection_hash"],
            units["period_end"],
            pa.array([r.impressions for r in results], pa.int64()),
            pa.array([r.views for r in results], pa.int64()),
            pa.array([r.time_spent for r in results], pa.int64()),
            pa.array([r.downloads for r in results], pa.int64()),
            units["fetched_at"],
            units[ACCOUNT],
            pa.array(complete, pa.bool_()),
            pa.array([r.pages_requested for r in results], pa.bool_()),
            pa.array([len(r.pages) for r in results], pa.int32()),
        ],
        schema=COLLECTION_FILE_SCHEMA,
    )


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: those it lacks (a file written before they
    existed) added as nulls, the rest in order and cast."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def unit_columns(results: Sequence[Fetched], owners: Mapping[str, str]) -> pa.Table:
    """The per-unit columns both datasets share."""
    hashes = [r.unit.collection_hash for r in results]
    return pa.table(
        {
            "collection_hash": pa.array(hashes, pa.string()),
            "period_end": pa.array([r.unit.end for r in results], pa.date32()),
            "fetched_at": pa.array([r.fetched_at for r in results], FETCHED_AT),
            ACCOUNT: pa.array([owners.get(h, DEFAULT_ACCOUNT) for h in hashes], pa.string()),
        }
    )


def unit_keys(units: Sequence[Unit]) -> pa.Table:
    """The (collection_hash, period_end) keys of ``units``, as the anti-join takes them."""
    return pa.table(
        {
            "collection_hash": pa.array([u.collection_hash for u in units], pa.string()),
            "period_end": pa.array([u.end for u in units], pa.date32()),
        }
    )


def partition_of(path: str) -> date | None:
    """The ``period_start`` of a part file's path, None when it is not one."""
    folder, _, file = path.rpartition("/")
    value = folder.rpartition("/")[2].removeprefix(f"{PARTITION_KEY}=")
    if file != PART_FILE or value == folder.rpartition("/")[2]:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None
