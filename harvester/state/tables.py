"""The state database's tables, and how a file written by an older harvester is carried over.

Version 1 kept one row per window sent; version 2 one row per calendar period; version 3 adds
when each answer was fetched (``fetched_at``) and what a staged unit is staged over
(``written_at``, ``written_pages``), so that the newest answer wins at the commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import orjson

from harvester.model import is_final, period_of

__all__ = ["FILES_SCHEMA", "READABLE_VERSIONS", "SCHEMA", "SCHEMA_VERSION", "upgrade"]

SCHEMA_VERSION = 3
# Read-only readers (status, verify) use none of version 3's columns: a version-2 file is fine.
READABLE_VERSIONS = (2, 3)
# The partial indexes keep "what is staged / failed / gone" cheap to find among a million done
# units; queries must spell the status as the same literal for SQLite to use them.
SCHEMA = """
CREATE TABLE units (
    collection_hash TEXT NOT NULL,
    period          TEXT NOT NULL,
    period_start    TEXT NOT NULL,
    period_end      TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('staged', 'done', 'failed', 'gone')),
    final           INTEGER NOT NULL DEFAULT 0,
    pages           INTEGER NOT NULL DEFAULT 0,
    written_start   TEXT,
    written_end     TEXT,
    fetched_at      TEXT,
    written_at      TEXT,
    written_pages   INTEGER,
    payload         TEXT,
    staged_at       TEXT,
    done_at         TEXT,
    error_kind      TEXT,
    error_reason    TEXT,
    attempts        INTEGER,
    failed_at       TEXT,
    PRIMARY KEY (period, collection_hash)
) WITHOUT ROWID;
CREATE INDEX units_staged ON units (period_start) WHERE status = 'staged';
CREATE INDEX units_failed ON units (period) WHERE status = 'failed';
CREATE INDEX units_gone ON units (collection_hash) WHERE status = 'gone';
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at TEXT NOT NULL,
    summary     TEXT NOT NULL
);
"""

# The partition files as commits left them: a listing that matches needs no read of the data.
FILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    dataset      TEXT NOT NULL,
    period_start TEXT NOT NULL,
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    PRIMARY KEY (dataset, period_start)
) WITHOUT ROWID
"""


def upgrade(db: sqlite3.Connection, version: int, granularity: str) -> None:
    """Create the tables in a new file (``version`` 0), or carry an older file over; the
    caller holds a write transaction."""
    if version == 2:
        _upgrade_2(db)
        return
    old: list[tuple[Any, ...]] = []
    runs: list[tuple[Any, ...]] = []
    if version == 1:
        old = db.execute(
            "SELECT collection_hash, period_start, period_end, status, payload,"
            " staged_at, done_at, error_kind, error_reason, attempts, failed_at"
            " FROM units"
        ).fetchall()
        runs = db.execute("SELECT recorded_at, summary FROM runs").fetchall()
        db.execute("DROP TABLE units")
        db.execute("DROP TABLE runs")
    for statement in SCHEMA.split(";"):  # executescript() would commit first
        if statement.strip():
            db.execute(statement)
    db.executemany("INSERT INTO runs (recorded_at, summary) VALUES (?, ?)", runs)
    db.executemany(_UPGRADE_INSERT, _newest_per_period(old, granularity))
    db.execute("INSERT INTO meta (key, value) VALUES ('granularity', ?)", (granularity,))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _upgrade_2(db: sqlite3.Connection) -> None:
    """Version 2 → 3: when each answer was fetched, and what a staged unit is staged over.

    Staged answers carry their ``fetched_at`` in the payload. Done units' is unknown: the files
    recorded are forgotten, so the next run reads the partitions of its window once and learns
    it from the dataset.
    """
    for column in ("fetched_at TEXT", "written_at TEXT", "written_pages INTEGER"):
        db.execute(f"ALTER TABLE units ADD COLUMN {column}")
    db.execute(
        "UPDATE units SET fetched_at = json_extract(payload, '$[0]')"
        " WHERE status = 'staged' AND payload IS NOT NULL"
    )
    db.execute(FILES_SCHEMA)
    db.execute("DELETE FROM files")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


_UPGRADE_INSERT = """
INSERT INTO units (collection_hash, period, period_start, period_end, status, final, pages,
                   fetched_at, payload, staged_at, done_at, error_kind, error_reason, attempts,
                   failed_at)
VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def _newest_per_period(rows: Sequence[tuple[Any, ...]], granularity: str) -> list[tuple[Any, ...]]:
    """Version-1 rows keyed by period, keeping the newest window of each.

    Version 1 kept one row per window sent: a clipped week fetched on three nights left three.
    Newest: the latest recorded activity, then the longest window. A staged answer's
    ``fetched_at`` is in its payload; a done unit's is not recorded, so the time it was written
    stands in for it when deciding whether it is final (version 1 wrote soon after fetching).
    Version 1 always asked for pages when it kept them.
    """
    best: dict[tuple[str, str], tuple[tuple[str, str], tuple[Any, ...]]] = {}
    for row in rows:
        h, start, end, status, payload, staged_at, done_at, kind, reason, attempts, failed = row
        period = period_of(granularity, date.fromisoformat(start)).isoformat()
        fetched = orjson.loads(payload)[0] if payload else None
        when = fetched or done_at
        final = int(bool(when) and is_final(date.fromisoformat(end), _moment(str(when))))
        rank = (max(staged_at or "", done_at or "", failed or ""), end)
        new = (h, period, start, end, status, final, fetched, payload, staged_at, done_at,
               kind, reason, attempts, failed)  # fmt: skip
        key = (period, h)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, new)
    return [new for _, new in best.values()]


def _moment(text: str) -> datetime:
    """A stored time back; one without a zone (never written so, but read defensively) is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
