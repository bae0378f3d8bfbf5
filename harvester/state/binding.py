"""A state describes one output: the binding between them, checked before anything is written.

A run refuses (exit 2) a job whose granularity, format or page statistics do not fit what the
output holds, a job against another API endpoint than the output was filled from (the demo's
simulator rows must never pass for the real API's; ``other_endpoint`` lets a run through, and
the record then names both), and a state bound to another output that is there. A state whose
output has vanished (no output record and no data: a test bucket wiped, a lake moved away)
describes nothing: it is discarded with a warning, and the run starts afresh from what the lake
holds. An output written before the record existed is adopted by its first run, which repairs
it: where a calendar period holds several windows, the newest stays and the others go. The
record is brought up to the current schema version (older part files are read with null in
the columns they lack: :mod:`harvester.lake.schema`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from harvester.errors import JobError, Problem
from harvester.job.model import Job, accounts_of, endpoints_of
from harvester.lake.fs import open_sink
from harvester.lake.output import (
    ACCOUNT_COLUMN_VERSION,
    OUTPUT_SCHEMA_VERSION,
    OutputMeta,
    load_meta,
    read_meta,
    write_meta,
)
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from harvester.model import Unit, period_of
from harvester.state.store import StateStore, default_state_path

__all__ = [
    "STATE_OUTPUT_ID",
    "bind_output",
    "check_fits",
    "check_output",
    "discard_vanished",
    "repair",
]

log = logging.getLogger("harvester.output")


STATE_OUTPUT_ID = "output_id"
STATE_OUTPUT_AT = "output_location"  # where that output was: an absolute path or a URI


def _has_data(sink: ParquetSink) -> bool:
    """Whether the output holds any dataset file."""
    return any(sink.list_parts(name) for name in (PAGE_STATS, COLLECTION_STATS))


OTHER_ENDPOINT_FLAG = "--allow-other-endpoint"  # the CLI's; RunOptions(allow_other_endpoint=True)


def _endpoint_problem(job: Job, meta: OutputMeta) -> Problem | None:
    """The job's accounts whose API the output was not filled from, if any."""
    foreign = {name: ep for name, ep in endpoints_of(job).items() if ep not in meta.endpoints}
    if not meta.endpoints or not foreign:
        return None
    theirs = ", ".join(f"{ep} (account {name})" for name, ep in foreign.items())
    return Problem(
        str(job.source),
        "api.base_url",
        f"{job.output} holds data from {', '.join(meta.endpoints)}; this job's API is"
        f" {theirs}. One output holds one API's rows (the demo's simulator rows would pass for"
        f" the real API's): give this job another output, or, if it is the same API under a"
        f" new address, run with {OTHER_ENDPOINT_FLAG} (RunOptions(allow_other_endpoint=True))",
    )


def check_output(job: Job, state_path: Path, *, other_endpoint: bool = False) -> OutputMeta | None:
    """Refuse (JobError, exit 2) a job that does not fit its output or its state; read only.

    Runs before anything is locked, requested or written.
    """
    return check_fits(job, state_path, read_meta(job.output), other_endpoint=other_endpoint)


def check_fits(
    job: Job, state_path: Path, meta: OutputMeta | None, *, other_endpoint: bool = False
) -> OutputMeta | None:
    """Refuse (JobError, exit 2) a job that does not fit the output record ``meta`` or its
    state; return ``meta``."""
    output = job.output
    problems: list[Problem] = []
    mismatch = None if meta is None or other_endpoint else _endpoint_problem(job, meta)
    if mismatch is not None:
        problems.append(mismatch)
    if meta is not None and meta.granularity != job.granularity:
        problems.append(
            Problem(
                str(job.source),
                "granularity",
                f"{output} holds {meta.granularity!r} windows; this job asks for"
                f" {job.granularity!r}. One output holds one granularity (sums over both"
                " would count the same traffic twice): give this job another output",
            )
        )
    if meta is not None and meta.format != job.format:
        problems.append(
            Problem(
                str(job.source),
                "format",
                f"{output} holds {meta.format} datasets; this job asks for {job.format!r}."
                " One output holds one format: give this job another output",
            )
        )
    if meta is not None and meta.page_stats and not job.page_stats:
        problems.append(
            Problem(
                str(job.source),
                "page_stats",
                f"{output} holds page statistics; with page_stats: false they would go"
                " stale beside new collection rows. Keep page_stats: true, or use another"
                " output",
            )
        )
    state_id = _state_output_id(state_path)
    other = state_id is not None and (meta is None or meta.id != state_id)
    if other and not _vanished(job, state_path):
        held = f"output {meta.id}" if meta is not None else "no harvester output record"
        problems.append(
            Problem(
                str(state_path),
                "output",
                f"this state belongs to output {state_id}, but {output} has {held}:"
                " one state describes one output. Give this job its own --state (or none:"
                f" the default is {default_state_path(output)})",
            )
        )
    if problems:
        raise JobError(problems)
    return meta


def _sink_of(job: Job) -> ParquetSink:
    """A sink to list the job's output with (nothing is written through it)."""
    return open_sink(job.output, job.format, catalog=job.catalog)


def _location(job: Job) -> str:
    """Where the job's output is, as a state records it: an absolute path, or the URI."""
    return str(job.output.path.resolve()) if job.output.is_local else str(job.output)


def _vanished(job: Job, state_path: Path, sink: ParquetSink | None = None) -> bool:
    """Whether the state describes an output that was where this job's output is, and that
    has vanished from there: no output record, no data (a bucket wiped, the lake moved away).

    A state from before the location was recorded is taken to describe the output it sits
    beside (or whose cache it is); another state bound elsewhere never has vanished here.
    """
    recorded = _state_meta(state_path, STATE_OUTPUT_AT)
    if recorded is None:
        ours = state_path.resolve() == default_state_path(job.output).resolve()
    else:
        ours = recorded == _location(job)
    if not ours:
        return False
    if sink is None:
        if read_meta(job.output) is not None:
            return False
    elif load_meta(sink.objects, job.output)[0] is not None:  # one GET, no HEAD first
        return False
    return not _has_data(sink or _sink_of(job))


def discard_vanished(job: Job, state_path: Path, sink: ParquetSink) -> bool:
    """Delete a state whose output has vanished (see :func:`_vanished`); the caller holds the
    lock. Returns whether it did.

    What it said was done is not there any more: kept, it would make every later run refuse
    (or trust rows that are gone). The run rebuilds a state from what the lake holds.
    """
    state_id = _state_output_id(state_path)
    if state_id is None or not _vanished(job, state_path, sink):
        return False
    log.warning(
        "%s: this state describes output %s, which is no longer at %s (no output record, no"
        " data): the state is discarded, and rebuilt from what the output holds",
        state_path,
        state_id,
        job.output,
    )
    for suffix in ("", "-wal", "-shm"):
        state_path.with_name(state_path.name + suffix).unlink(missing_ok=True)
    return True


def _state_output_id(state_path: Path) -> str | None:
    """The output id a state records, if the state exists and holds units."""
    return _state_meta(state_path, STATE_OUTPUT_ID)


def _state_meta(state_path: Path, key: str) -> str | None:
    """A setting a state records, if the state exists and holds units."""
    if not state_path.is_file():
        return None
    try:
        with StateStore(state_path, readonly=True) as store:
            return None if store.is_empty() else store.get_meta(key)
    except Exception:  # an old or unreadable state: the run's own open reports it properly
        return None


def bind_output(
    job: Job,
    store: StateStore,
    sink: ParquetSink,
    *,
    now: datetime,
    other_endpoint: bool = False,
) -> OutputMeta:
    """Adopt or create the output's record, tie the state to it; the caller holds the lock.

    The record is read with its version, and rewritten (once at most) over that version only.
    """
    meta, version = load_meta(sink.objects, job.output)
    meta = check_fits(job, store.path, meta, other_endpoint=other_endpoint)
    read = meta
    if meta is None or meta.schema_version < ACCOUNT_COLUMN_VERSION:
        _migrate(sink, job)
    if meta is None:
        if _has_data(sink):
            removed, touched = repair(sink, job.granularity)
            if removed:
                store.forget(touched)
                log.warning(
                    "%s: removed %d older windows of calendar periods that held several"
                    " (kept the newest of each); their periods are fetched again",
                    job.output,
                    len(removed),
                )
        meta = OutputMeta(
            id=uuid.uuid4().hex,
            granularity=job.granularity,
            page_stats=job.page_stats,
            created_at=now.isoformat(timespec="seconds"),
            format=job.format,
        )
    elif job.page_stats and not meta.page_stats:
        meta = replace(meta, page_stats=True)
        log.info(
            "%s: page statistics turned on; units written without pages are fetched again",
            job.output,
        )
    # An older record, a new account or an endpoint let through: the record names them.
    meta = _current_schema(job, _with_sources(job, meta))
    if meta != read:
        write_meta(sink.objects, job.output, meta, expect=version)
    if store.get_meta(STATE_OUTPUT_ID) != meta.id:
        store.set_meta(STATE_OUTPUT_ID, meta.id)
    if store.get_meta(STATE_OUTPUT_AT) != _location(job):  # set anew when the lake moved
        store.set_meta(STATE_OUTPUT_AT, _location(job))
    return meta


def _current_schema(job: Job, meta: OutputMeta) -> OutputMeta:
    """The record at the current schema version (logged when it was older)."""
    if meta.schema_version >= OUTPUT_SCHEMA_VERSION:
        return meta
    # Older harvesters refuse a newer version: none of them writes files without the columns
    # this one reads (nor fails on the columns it writes) from now on.
    log.info(
        "%s: output schema version %d → %d (collection_stats gains complete, pages_requested"
        " and page_count; older files read them as null; every file has the account column)",
        job.output,
        meta.schema_version,
        OUTPUT_SCHEMA_VERSION,
    )
    return replace(meta, schema_version=OUTPUT_SCHEMA_VERSION)


def _with_sources(job: Job, meta: OutputMeta) -> OutputMeta:
    """The record with the job's endpoints and accounts added (sorted, each once)."""
    endpoints = tuple(sorted({*meta.endpoints, *endpoints_of(job).values()}))
    accounts = tuple(sorted({*meta.accounts, *(a.name for a in accounts_of(job))}))
    return replace(meta, endpoints=endpoints, accounts=accounts)


def _migrate(sink: ParquetSink, job: Job) -> None:
    """Give the files an older harvester wrote the ``account`` column (once per output: the
    record then says so)."""
    migrated = sink.migrate_accounts()
    if migrated:
        log.info("%s: added the account column to %d files written before it", job.output, migrated)


def repair(sink: ParquetSink, granularity: str) -> tuple[list[Unit], list[Unit]]:
    """Keep the newest window of each (collection, calendar period); remove the others.

    Returns the windows removed, and every window of the periods that held several.
    """
    keys = sink.units(COLLECTION_STATS).to_pylist()
    by_period: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for row in keys:
        period = period_of(granularity, row["period_start"])
        by_period.setdefault((row["collection_hash"], period), []).append(row)
    removed: list[Unit] = []
    touched: list[Unit] = []
    for rows in by_period.values():
        if len(rows) < 2:
            continue
        rows.sort(key=lambda r: (r["fetched_at"], r["period_end"]))
        units = [Unit(r["collection_hash"], r["period_start"], r["period_end"]) for r in rows]
        removed.extend(units[:-1])
        touched.extend(units)
    if removed:
        sink.remove(removed)
    return removed, touched
