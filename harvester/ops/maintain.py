"""``harvester maintain OUTPUT``: upkeep of a Delta or Iceberg output, under the output's lock."""

from __future__ import annotations

from datetime import datetime

from harvester.errors import UsageError
from harvester.job.location import Location
from harvester.lake.delta import DeltaSink
from harvester.lake.fs import check_reachable, open_sink, storage_errors
from harvester.lake.iceberg import IcebergSink
from harvester.lake.objlock import output_lock
from harvester.lake.output import read_meta

__all__ = ["maintain_output"]


def maintain_output(
    output: str, retention_hours: int, *, now: datetime | None = None, wait: bool = False
) -> list[str]:
    """Delta: compact and vacuum; Iceberg: expire old snapshots; under the output's lock
    (LockedError, exit 4, while a run holds it, unless ``wait``: then after that run).

    ``now`` (UTC) is when the retention counts from (default: the clock's now).
    """

    try:
        location = Location.parse(output)
    except ValueError as exc:
        raise UsageError(f"maintain: {exc}") from None
    check_reachable(location, output)
    meta = read_meta(location)
    if meta is None:
        raise UsageError(f"{location}: not a harvester output (no _harvester/output.json)")
    if meta.format not in ("delta", "iceberg"):
        return [f"{location}: a Parquet output keeps one file per partition: nothing to compact"]
    lock = output_lock(location)
    lock.acquire(wait=wait)
    try:
        with storage_errors(location):
            sink = open_sink(location, meta.format)
            if isinstance(sink, IcebergSink):
                return sink.maintain(retention_hours, now=now)
            assert isinstance(sink, DeltaSink)
            return sink.maintain(retention_hours)
    finally:
        lock.release()
