"""Object storage, the few operations beyond the sink's: reach the bucket, publish reports.

Everything that talks to an output's filesystem outside the datasets goes through here: the
check that the bucket exists and the credentials are accepted (pyarrow reports a missing bucket
only when writing, so it is asked explicitly, before any request to the API), the run reports'
copy in the output (written through :mod:`harvester.lake.objects`, as a new key), and the one
translation of the store's ``OSError`` into :class:`~harvester.errors.StorageError`.

Storage credentials are secrets like the API's: they are registered for redaction before the
first request, so no message, log line or report can show them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from harvester.errors import JobError, Problem, StorageError
from harvester.job.location import SECRET_VARS, Location
from harvester.job.model import CatalogSettings
from harvester.lake.delta import DeltaSink
from harvester.lake.iceberg import IcebergSink
from harvester.lake.objects import NEW, Objects
from harvester.lake.parquet import ParquetSink
from harvester.layout import RUNS_DIR, STATE_DIR
from harvester.redact import redact, register_secrets

__all__ = [
    "check_reachable",
    "location_fs",
    "open_sink",
    "publish_report",
    "register_storage_secrets",
    "storage_errors",
]


def location_fs(location: Location) -> Any:
    """The pyarrow filesystem of ``location`` (made anew: the environment may have changed)."""
    return location.filesystem()


def register_storage_secrets(env: Mapping[str, str] | None = None) -> None:
    """Keep the store's credentials out of every message."""
    env = os.environ if env is None else env
    register_secrets([env[name] for name in SECRET_VARS if env.get(name)])


def check_reachable(location: Location, source: str = "output") -> None:
    """Refuse a missing bucket (JobError, exit 2) or refused credentials (StorageError, 74)."""
    if location.is_local:
        return
    import pyarrow.fs as pafs

    register_storage_secrets()
    try:
        info = location_fs(location).get_file_info(location.bucket)
    except OSError as exc:
        raise StorageError(
            f"{location}: the object store refused or failed the request"
            f" ({redact(str(exc))}); check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
            " and the endpoint"
        ) from None
    if info.type == pafs.FileType.NotFound:
        msg = f"bucket {location.bucket!r} does not exist at {location.scheme}://"
        raise JobError([Problem(source, "output", f"{msg}: create it first (nothing written)")])


def publish_report(
    objects: Objects, location: Location, state_dir: Path, run_id: str, text: str
) -> None:
    """Put a run's report into the output itself (``_harvester/runs/``), unless it is there.

    A local output with its state inside already holds it (``_state/reports/``); an object
    store, or a state kept elsewhere, gets a copy, so run history survives a new machine. The
    key is new (``If-None-Match: *``): a report never replaces another.
    """
    if location.is_local and state_dir.resolve() == (location.path / STATE_DIR).resolve():
        return
    path = location.join(*RUNS_DIR.split("/"), f"run-{run_id}.json")
    objects.put(path, text.encode("utf-8"), expect=NEW)


def open_sink(
    location: Location,
    fmt: str = "parquet",
    owners: Mapping[str, str] | None = None,
    *,
    catalog: CatalogSettings | None = None,
    granularity: str = "day",
) -> ParquetSink:
    """The writer for an output: Hive-partitioned Parquet, Delta tables (``format: delta``) or
    Iceberg tables (``format: iceberg``, in ``catalog``; None: the one the output records).

    ``owners`` maps each collection hash to its account (the ``account`` column);
    ``granularity`` says which windows are whole calendar periods (the ``complete`` column).
    """
    if fmt == "delta":
        return DeltaSink(location, owners, granularity=granularity)
    if fmt == "iceberg":
        return IcebergSink(location, owners, catalog, granularity=granularity)
    return ParquetSink(location, owners, granularity=granularity)


@contextlib.contextmanager
def storage_errors(location: Location) -> Iterator[None]:
    """Name an object store's failures as its own (exit 74), not as the local disk's."""
    if location.is_local:
        yield
        return
    try:
        yield
    except OSError as exc:
        raise StorageError(
            f"{location}: the object store (or the local state) refused or failed a read or"
            f" write: {redact(str(exc))}"
        ) from None
