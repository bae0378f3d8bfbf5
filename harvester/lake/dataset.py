"""``read_dataset``: a whole dataset of any output, read the way its format must be read.

Parquet is read as Hive-partitioned files; Delta and Iceberg through their tables (the latest
version, the current snapshot), never as a folder of files, which also holds the files of
older versions. The format comes from the output's record (``_harvester/output.json``), else
from what the output holds. ``s3://``, ``gs://`` and ``abfs://`` outputs go through the same
filesystem a run uses (endpoint and region from the ``storage`` options given, else
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and ``AWS_REGION``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import date

import pyarrow as pa
import pyarrow.fs as pafs

from harvester.errors import BadFile, JobError, UnreadableFiles
from harvester.job.location import Location, StorageOptions
from harvester.lake.fs import open_sink
from harvester.lake.output import OutputMeta, read_meta
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import COLLECTION_STATS, PARTITION_KEY, SCHEMAS, SORT_KEYS
from harvester.layout import ICEBERG_FILE, META_DIR

__all__ = [
    "as_location",
    "dataset_format",
    "format_of",
    "read_dataset",
    "read_readable",
    "readable_meta",
]


def read_dataset(
    output: str | os.PathLike[str] | Location,
    name: str,
    *,
    storage: StorageOptions | None = None,
) -> pa.Table:
    """A whole dataset as a reader should see it, with its full schema, sorted by unit (and
    page): a Delta or Iceberg table at its latest version, or the Parquet partitions.

    ``output`` is the output: a folder (a string or a path), a URI (``s3://bucket/prefix``)
    or a :class:`Location`; ``name`` is ``page_stats`` or ``collection_stats``; ``storage``
    gives an S3-compatible store's endpoint and region, as a job's ``storage:`` block does.
    A part file that cannot be read raises :class:`~harvester.errors.UnreadableFiles`,
    naming it.
    """
    if name not in SCHEMAS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(SCHEMAS)}")
    location = as_location(output, storage)
    table = open_sink(location, format_of(location)).read(name)
    keys = ["collection_hash", PARTITION_KEY, *SORT_KEYS[name][1:]]
    return table.sort_by([(k, "ascending") for k in keys])


def as_location(
    output: str | os.PathLike[str] | Location, storage: StorageOptions | None = None
) -> Location:
    """``output`` as a Location: a URI (``s3://bucket/prefix``) or a local folder."""
    if isinstance(output, Location):
        return output
    if isinstance(output, str) and "://" in output:
        return Location.parse(output, storage)
    return Location.local(output, storage)


def format_of(location: Location) -> str:
    """The output's format, from its record; without one, from what the output holds."""
    if location.is_local and not location.path.is_dir():
        return "parquet"  # nothing there: an empty dataset
    return dataset_format(location, read_meta(location))


def readable_meta(location: Location) -> OutputMeta | None:
    """The output's record; a broken one is ignored (the data says what it holds)."""
    try:
        return read_meta(location)
    except JobError:
        return None


def dataset_format(location: Location, meta: OutputMeta | None) -> str:
    """What the record says, else ``iceberg`` or ``delta`` when the output holds such tables,
    else ``parquet``."""
    if meta is not None:
        return meta.format
    fs = location.filesystem()
    if fs.get_file_info(location.join(META_DIR, ICEBERG_FILE)).type == pafs.FileType.File:
        return "iceberg"
    log = fs.get_file_info(location.join(COLLECTION_STATS, "_delta_log"))
    return "delta" if log.type == pafs.FileType.Directory else "parquet"


def read_readable(
    sink: ParquetSink,
    name: str,
    columns: list[str] | None,
    starts: Sequence[date] | None,
    on_unreadable: Callable[[BadFile], None] = lambda bad: None,
) -> tuple[pa.Table, list[BadFile]]:
    """:meth:`~harvester.lake.parquet.ParquetSink.read` without the partitions whose files
    cannot be read; those files, each passed to ``on_unreadable`` (a run moves it aside).

    Reads stay whole scans: only a failed one is retried without the files it named.
    """
    chosen = list(starts) if starts is not None else None
    skipped: list[BadFile] = []
    while True:
        try:
            return sink.read(name, columns, chosen), skipped
        except UnreadableFiles as exc:
            broken = {bad.period_start for bad in exc.files}
            for bad in exc.files:
                on_unreadable(bad)
            skipped += exc.files
            if chosen is None:
                chosen = sorted(sink.list_parts(name))
            chosen = [s for s in chosen if s not in broken]
