"""What an output holds, recorded in the output itself.

``OUTPUT/_harvester/output.json`` is written with the first data: an id, the granularity,
whether page statistics are kept, the format, the schema version, the API endpoints the data
came from (canonical: :func:`harvester.api.canonical_endpoint`; ``simulator`` for the bundled
one) and the accounts; a state records the id of the output it describes
(:mod:`harvester.state.binding` checks the two, and the endpoint, before a run writes).
``OUTPUT/_harvester/discovered.json`` keeps the collections each account listed last, for
``harvester plan``, which makes no request.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from harvester.errors import JobError, Problem
from harvester.job.location import Location
from harvester.lake.fs import location_fs
from harvester.lake.objects import NEW, Objects, Version
from harvester.layout import DISCOVERED_FILE, META_DIR, META_FILE

__all__ = [
    "ACCOUNT_COLUMN_VERSION",
    "META_FILE",
    "OUTPUT_SCHEMA_VERSION",
    "OutputMeta",
    "load_meta",
    "read_discovered",
    "read_meta",
    "write_discovered",
    "write_meta",
]

log = logging.getLogger("harvester.output")

# 2: collection_stats has complete, pages_requested and page_count (files from 1 lack them),
# and every part file has the ``account`` column (version 1 outputs are migrated once, by the
# first run that finds them, and then recorded as 2: no run reads a footer to find out again).
OUTPUT_SCHEMA_VERSION = 2
ACCOUNT_COLUMN_VERSION = 2


@dataclass(frozen=True)
class OutputMeta:
    """The output's own record of what it holds."""

    id: str
    granularity: str
    page_stats: bool
    schema_version: int = OUTPUT_SCHEMA_VERSION
    created_at: str = ""
    format: str = "parquet"  # or "delta": the datasets are Delta tables
    endpoints: tuple[str, ...] = ()  # the APIs it was filled from; () in records older than this
    accounts: tuple[str, ...] = ()  # the accounts' names (``default`` for a job without any)


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
    except FileNotFoundError:
        return None
    return _parse_meta(text, path)


def load_meta(objects: Objects, output: Location) -> tuple[OutputMeta | None, Version]:
    """The record as a writer reads it: with the version a rewrite of it must replace."""
    path = output.join(META_DIR, META_FILE)
    found = objects.get(path)
    if found is None:
        return None, NEW
    try:
        text = found[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobError([Problem(path, "<file>", f"unreadable output record: {exc}")]) from None
    return _parse_meta(text, path), found[1]


def _parse_meta(text: str, path: str) -> OutputMeta:
    """The record from its JSON text; JobError naming ``path`` when it is not one."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:  # OSError (not a folder, denied) is the disk's: exit 74
        raise JobError([Problem(str(path), "<file>", f"unreadable output record: {exc}")]) from None
    try:
        meta = OutputMeta(
            id=str(data["id"]),
            granularity=str(data["granularity"]),
            page_stats=bool(data["page_stats"]),
            schema_version=int(data.get("schema_version", 1)),  # 1 wrote it already
            created_at=str(data.get("created_at", "")),
            format=str(data.get("format", "parquet")),
            endpoints=_names(data.get("endpoints", [])),
            accounts=_names(data.get("accounts", [])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"not a harvester output record (missing or bad {exc})"
        raise JobError([Problem(str(path), "<file>", msg)]) from None
    if meta.schema_version > OUTPUT_SCHEMA_VERSION:
        msg = f"schema version {meta.schema_version} is newer than this harvester's"
        raise JobError([Problem(str(path), "schema_version", msg)])
    return meta


def _names(raw: Any) -> tuple[str, ...]:
    """A list of strings from the record; TypeError (a bad record) for anything else."""
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise TypeError("endpoints or accounts: expected a list of strings")
    return tuple(raw)


def write_meta(objects: Objects, output: Location, meta: OutputMeta, *, expect: Version) -> None:
    """Write the record over the version read (NEW: only if there is none)."""
    text = json.dumps(asdict(meta), indent=2) + "\n"
    objects.put(output.join(META_DIR, META_FILE), text.encode("utf-8"), expect=expect)


def write_discovered(
    objects: Objects, output: Location, listed: dict[str, list[str]], *, now: datetime
) -> None:
    """Record the collections ``discover`` listed, by account, for ``harvester plan``."""
    data = {"listed_at": now.isoformat(timespec="seconds"), "accounts": listed}
    path = output.join(META_DIR, DISCOVERED_FILE)
    found = objects.get(path)
    expect = NEW if found is None else found[1]
    objects.put(path, (json.dumps(data) + "\n").encode("utf-8"), expect=expect)


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
