"""Part files as a reader meets them: scanned with their sizes known, and told apart when damaged.

:func:`scan` makes a dataset of given files (path, size, partition) without asking the store
for each file's size. :func:`damage` says why a file's bytes are not its dataset's Parquet
(truncated, garbage, another table's columns): the sinks call it on the bytes of each file of a
read that failed, read whole first, so that a store failing stays the store's error and only a
file that does not parse is named (:class:`~harvester.errors.UnreadableFiles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from harvester.errors import BadFile
from harvester.lake.schema import FILE_SCHEMAS, PARTITION_KEY, UNIT_KEY

__all__ = ["READ_ERRORS", "Quarantined", "damage", "scan"]

# What a part file that is not the dataset's Parquet makes pyarrow raise (OSError included: a
# corrupt page fails to decompress as an I/O error). Which of them is the store's own failure
# is told apart by reading the file's bytes first (see ParquetSink.unreadable).
READ_ERRORS = (pa.ArrowException, OSError)


class Quarantined(NamedTuple):
    """An unreadable part file a run moved aside: what it was, and where it went."""

    file: BadFile
    moved_to: str


def damage(body: bytes, name: str) -> str | None:
    """Why the bytes of a ``name`` part file are not its Parquet, or None when they are."""
    try:
        table = pq.read_table(pa.BufferReader(body))
        schema = FILE_SCHEMAS[name]
        missing = [c for c in UNIT_KEY if c not in table.column_names]
        if missing:
            return f"not a {name} file: no column {missing[0]!r}"
        for field in schema:  # a column it has must be the dataset's type (older files lack some)
            if field.name in table.column_names:
                table[field.name].cast(field.type)
    except (*READ_ERRORS, ValueError, TypeError) as exc:
        return _first_line(exc)
    return None


def scan(
    files: Sequence[tuple[str, int | None, date]], schema: pa.Schema, fs: pafs.FileSystem
) -> ds.Dataset:
    """A dataset of part files (path, size when known, partition), with ``schema``.

    A fragment per file, its partition value attached (the folder name is not parsed) and its
    size given when known, so an object store is asked for each file's data, not its size.
    """
    fmt = ds.ParquetFileFormat(
        default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=True)
    )
    fragments = [
        fmt.make_fragment(
            path,
            filesystem=fs,
            partition_expression=pc.field(PARTITION_KEY) == pa.scalar(start, pa.date32()),
            file_size=size,
        )
        for path, size, start in files
    ]
    return ds.FileSystemDataset(fragments, schema, fmt, fs)


def _first_line(exc: BaseException) -> str:
    """The reader's message, first line, without the in-memory buffer's name."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line.replace("Could not open Parquet input source '<Buffer>': ", "")
