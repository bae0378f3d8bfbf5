"""``harvester maintain OUTPUT``: compact and vacuum a Delta output, under the output's lock."""

from __future__ import annotations

from harvester.errors import UsageError
from harvester.job.location import Location
from harvester.lake.delta import DeltaSink
from harvester.lake.fs import check_reachable
from harvester.lake.objlock import output_lock
from harvester.lake.output import read_meta

__all__ = ["maintain_output"]


def maintain_output(output: str, retention_hours: int) -> list[str]:
    """``harvester maintain OUTPUT``: compact and vacuum a Delta output, under its lock."""

    try:
        location = Location.parse(output)
    except ValueError as exc:
        raise UsageError(f"maintain: {exc}") from None
    check_reachable(location, output)
    meta = read_meta(location)
    if meta is None:
        raise UsageError(f"{location}: not a harvester output (no _harvester/output.json)")
    if meta.format != "delta":
        return [f"{location}: a Parquet output keeps one file per partition: nothing to compact"]
    lock = output_lock(location)
    lock.acquire()
    try:
        return DeltaSink(location).maintain(retention_hours)
    finally:
        lock.release()
