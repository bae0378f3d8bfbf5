"""What an output holds, recorded in the output itself, and the state store bound to it.

``OUTPUT/_harvester/output.json`` is written with the first data: an id, the granularity,
whether page statistics are kept, and the schema version. A state store records the id of the
output it describes. A run checks both before it requests or writes anything, so that:

- a state pointed at another output is refused (ids are compared, not paths);
- a job with another granularity is refused (a daily and a weekly dataset in one folder would
  each count the same traffic);
- ``page_stats: false`` on an output that holds pages is refused; turning pages on is allowed
  (units written without pages are fetched again).

An output written before the record existed is adopted by its first run, which also repairs
it: where a calendar period holds several windows (a clipped week fetched on three nights),
the newest stays and the others go.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from harvester.config import Job
from harvester.errors import JobError, Problem
from harvester.location import Location
from harvester.model import Unit, period_of
from harvester.sink import COLLECTION_STATS, PAGE_STATS, ParquetSink
from harvester.state import StateStore, default_state_path
from harvester.storage import location_fs, put_text

__all__ = [
    "META_FILE",
    "OutputMeta",
    "bind_output",
    "check_output",
    "read_discovered",
    "read_meta",
    "write_discovered",
]

log = logging.getLogger("harvester.output")

META_DIR = "_harvester"
META_FILE = "output.json"
OUTPUT_SCHEMA_VERSION = 1
STATE_OUTPUT_ID = "output_id"


@dataclass(frozen=True)
class OutputMeta:
    """The output's own record of what it holds."""

    id: str
    granularity: str
    page_stats: bool
    schema_version: int = OUTPUT_SCHEMA_VERSION
    created_at: str = ""
    format: str = "parquet"  # or "delta": the datasets are Delta tables


def meta_path(output: Path | Location) -> Path:
    """Where a local output keeps its record."""
    return Path(output) / META_DIR / META_FILE


def _as_location(output: Path | Location) -> Location:
    return output if isinstance(output, Location) else Location.local(output)


def read_meta(output: Path | Location) -> OutputMeta | None:
    """The output's record, None when it has none; JobError when it is unreadable."""
    location = _as_location(output)
    path = location.join(META_DIR, META_FILE)
    try:
        if location.is_local:
            text = Path(path).read_text(encoding="utf-8")
        else:
            with location_fs(location).open_input_stream(path) as fh:
                text = fh.read().decode("utf-8")
        data: Any = json.loads(text)
    except FileNotFoundError:
        return None
    except ValueError as exc:  # OSError (not a folder, denied) is the disk's: exit 74
        raise JobError([Problem(str(path), "<file>", f"unreadable output record: {exc}")]) from None
    try:
        meta = OutputMeta(
            id=str(data["id"]),
            granularity=str(data["granularity"]),
            page_stats=bool(data["page_stats"]),
            schema_version=int(data.get("schema_version", OUTPUT_SCHEMA_VERSION)),
            created_at=str(data.get("created_at", "")),
            format=str(data.get("format", "parquet")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"not a harvester output record (missing or bad {exc})"
        raise JobError([Problem(str(path), "<file>", msg)]) from None
    if meta.schema_version > OUTPUT_SCHEMA_VERSION:
        msg = f"schema version {meta.schema_version} is newer than this harvester's"
        raise JobError([Problem(str(path), "schema_version", msg)])
    return meta


def write_meta(output: Path | Location, meta: OutputMeta) -> None:
    """Write the record beside, fsync, rename (on an object store: one upload)."""
    location = _as_location(output)
    text = json.dumps(asdict(meta), indent=2) + "\n"
    if not location.is_local:
        put_text(location, location.join(META_DIR, META_FILE), text)
        return
    path = meta_path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


DISCOVERED_FILE = "discovered.json"


def write_discovered(
    output: Path | Location, listed: dict[str, list[str]], *, now: datetime
) -> None:
    """Record the collections ``discover`` listed, by account, for ``harvester plan``."""
    location = _as_location(output)
    data = {"listed_at": now.isoformat(timespec="seconds"), "accounts": listed}
    text = json.dumps(data) + "\n"
    if not location.is_local:
        put_text(location, location.join(META_DIR, DISCOVERED_FILE), text)
        return
    path = Path(location.join(META_DIR, DISCOVERED_FILE))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_discovered(output: Path | Location) -> tuple[dict[str, list[str]], str] | None:
    """The collections the last ``discover`` listed, by account, and when; or None."""
    location = _as_location(output)
    path = location.join(META_DIR, DISCOVERED_FILE)
    try:
        if location.is_local:
            text = Path(path).read_text(encoding="utf-8")
        else:
            with location_fs(location).open_input_stream(path) as fh:
                text = fh.read().decode("utf-8")
        data = json.loads(text)
        listed = {
            str(name): [h for h in hashes if isinstance(h, str)]
            for name, hashes in data["accounts"].items()
        }
        return listed, str(data["listed_at"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _has_data(sink: ParquetSink) -> bool:
    """Whether the output holds any dataset file."""
    return any(sink.list_parts(name) for name in (PAGE_STATS, COLLECTION_STATS))


def check_output(job: Job, state_path: Path) -> OutputMeta | None:
    """Refuse (JobError, exit 2) a job that does not fit its output or its state; read only.

    Runs before anything is locked, requested or written.
    """
    output, meta = job.output, read_meta(job.output)
    problems: list[Problem] = []
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
    if state_id is not None and (meta is None or meta.id != state_id):
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


def _state_output_id(state_path: Path) -> str | None:
    """The output id a state records, if the state exists and holds units."""
    if not state_path.is_file():
        return None
    try:
        with StateStore(state_path, readonly=True) as store:
            return None if store.is_empty() else store.get_meta(STATE_OUTPUT_ID)
    except Exception:  # an old or unreadable state: the run's own open reports it properly
        return None


def bind_output(job: Job, store: StateStore, sink: ParquetSink, *, now: datetime) -> OutputMeta:
    """Adopt or create the output's record, tie the state to it; the caller holds the lock."""
    meta = check_output(job, store.path)
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
        write_meta(job.output, meta)
    elif job.page_stats and not meta.page_stats:
        meta = replace(meta, page_stats=True)
        write_meta(job.output, meta)
        log.info(
            "%s: page statistics turned on; units written without pages are fetched again",
            job.output,
        )
    if store.get_meta(STATE_OUTPUT_ID) != meta.id:
        store.set_meta(STATE_OUTPUT_ID, meta.id)
    return meta


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
