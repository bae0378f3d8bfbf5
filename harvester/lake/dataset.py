"""``read_dataset``: a whole dataset of any output, read the way its format must be read.

Parquet is read as Hive-partitioned files; Delta and Iceberg through their tables (the latest
version, the current snapshot), never as a folder of files, which also holds the files of
older versions. The format comes from the output's record (``_harvester/output.json``).
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs

from harvester.job.location import Location
from harvester.lake.fs import open_sink
from harvester.lake.output import read_meta
from harvester.lake.parquet import read_dataset as read_sorted
from harvester.lake.schema import COLLECTION_STATS
from harvester.layout import ICEBERG_FILE, META_DIR

__all__ = ["format_of", "read_dataset"]


def read_dataset(output: str | os.PathLike[str] | Location, name: str) -> pa.Table:
    """A whole dataset with its full schema, sorted by unit (and page).

    ``output`` is the output (a folder as a string or a path, or a :class:`Location`, e.g.
    ``Location.parse("s3://bucket/prefix")``); ``name`` is ``page_stats`` or ``collection_stats``.
    """
    location = output if isinstance(output, Location) else Location.local(output)
    fmt = format_of(location)
    if fmt == "parquet":
        return read_sorted(location, name)
    return read_sorted(location, name, sink=open_sink(location, fmt))


def format_of(location: Location) -> str:
    """The output's format, from its record; without one, from what the folder holds."""
    if location.is_local and not location.path.is_dir():
        return "parquet"  # nothing there: an empty dataset
    meta = read_meta(location)
    if meta is not None:
        return meta.format
    fs = location.filesystem()
    if fs.get_file_info(location.join(META_DIR, ICEBERG_FILE)).type == pafs.FileType.File:
        return "iceberg"
    if (
        fs.get_file_info(location.join(COLLECTION_STATS, "_delta_log")).type
        == pafs.FileType.Directory
    ):
        return "delta"
    return "parquet"
