"""What is done, failed, in flight: a SQLite record per unit, the staging area, the output lock.

A fetched unit is first *staged* here (its answer kept as a compact JSON payload), so a killed
run loses at most the units in flight. When the unit's output partition is complete, the sink
rewrites the partition and :meth:`StateStore.mark_done` flips its units to *done* in one
transaction. A crash between the Parquet rename and that transaction is harmless: the units are
still staged, and the next run rewrites the partition from their payloads (an upsert).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import orjson

from harvester.errors import HarvesterError, LockedError
from harvester.model import Fetched, Unit
from harvester.redact import redact, redact_data

__all__ = ["FailedUnit", "OutputLock", "StateStore", "default_state_path"]

STATE_DIR = "_state"
STATE_FILE = "state.sqlite"
LOCK_FILE = "harvester.lock"
SCHEMA_VERSION = 1
# 300 units x 3 values stays under SQLite's historical limit of 999 bound parameters.
CHUNK_UNITS = 300
# A window shared by this many units of a batch is read whole (see done_among).
SHARED_WINDOW_UNITS = 16

STAGED = "staged"
DONE = "done"
FAILED = "failed"
STATUSES = (DONE, STAGED, FAILED)

# The partial indexes keep "what is staged / failed" cheap to find among a million done units;
# queries must spell the status as the same literal for SQLite to use them.
_SCHEMA = """
CREATE TABLE units (
    collection_hash TEXT NOT NULL,
    period_start    TEXT NOT NULL,
    period_end      TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('staged', 'done', 'failed')),
    payload         TEXT,
    staged_at       TEXT,
    done_at         TEXT,
    error_kind      TEXT,
    error_reason    TEXT,
    attempts        INTEGER,
    failed_at       TEXT,
    PRIMARY KEY (period_start, collection_hash, period_end)
) WITHOUT ROWID;
CREATE INDEX units_staged ON units (period_start) WHERE status = 'staged';
CREATE INDEX units_failed ON units (period_start) WHERE status = 'failed';
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at TEXT NOT NULL,
    summary     TEXT NOT NULL
);
"""

_STAGE = """
INSERT INTO units (collection_hash, period_start, period_end, status, payload, staged_at)
VALUES (?, ?, ?, 'staged', ?, ?)
ON CONFLICT DO UPDATE SET status = 'staged', payload = excluded.payload,
                          staged_at = excluded.staged_at
"""

_MARK_DONE = """
INSERT INTO units (collection_hash, period_start, period_end, status, done_at)
VALUES (?, ?, ?, 'done', ?)
ON CONFLICT DO UPDATE SET status = 'done', payload = NULL, done_at = excluded.done_at
"""

# A failed refresh of a done (or staged) unit must not hide the good rows: keep the status.
_MARK_FAILED = """
INSERT INTO units (collection_hash, period_start, period_end, status,
                   error_kind, error_reason, attempts, failed_at)
VALUES (?, ?, ?, 'failed', ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    status = CASE WHEN status IN ('done', 'staged') THEN status ELSE 'failed' END,
    error_kind = excluded.error_kind, error_reason = excluded.error_reason,
    attempts = excluded.attempts, failed_at = excluded.failed_at
"""

Key = tuple[str, str, str]


def default_state_path(output: Path) -> Path:
    """Where a run writing to ``output`` keeps its state database."""
    return output / STATE_DIR / STATE_FILE


def _utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class FailedUnit(NamedTuple):
    """A unit whose last outcome is a failure, with the error recorded for it."""

    unit: Unit
    kind: str
    reason: str
    attempts: int
    failed_at: str  # ISO 8601, UTC


def _key(unit: Unit) -> Key:
    """The unit's primary key as stored: ISO dates."""
    return (unit.collection_hash, unit.start.isoformat(), unit.end.isoformat())


def _unit(collection_hash: str, start: str, end: str) -> Unit:
    """A unit back from its stored key."""
    return Unit(collection_hash, date.fromisoformat(start), date.fromisoformat(end))


def _encode(result: Fetched) -> str:
    """The compact payload: [fetched_at, impressions, views, time_spent, downloads, pages].

    orjson writes the same compact JSON as ``json.dumps(..., separators=(",", ":"))``, faster.
    """
    return orjson.dumps(
        [
            result.fetched_at.isoformat(),
            result.impressions,
            result.views,
            result.time_spent,
            result.downloads,
            result.pages,
        ]
    ).decode()


def _decode(unit: Unit, payload: str) -> Fetched:
    """Exactly the Fetched that ``_encode`` was given."""
    fetched_at, impressions, views, time_spent, downloads, pages = orjson.loads(payload)
    return Fetched(
        unit=unit,
        fetched_at=datetime.fromisoformat(fetched_at),
        impressions=impressions,
        views=views,
        time_spent=time_spent,
        downloads=downloads,
        pages=tuple(map(tuple, pages)),  # each page is [page, views, clicks, time_spent]
    )


@cache
def _done_among_sql(n: int) -> str:
    """The lookup for ``n`` keys, cached so sqlite3 reuses its prepared statement.

    A join against a VALUES list, not ``(a, b, c) IN (VALUES ...)``: SQLite 3.40 answers the
    row-value IN form with a full table scan, the join with primary-key searches.
    """
    values = ",".join(["(?,?,?)"] * n)
    return (
        "SELECT u.collection_hash, u.period_start, u.period_end"
        f" FROM (VALUES {values}) AS k"
        " JOIN units AS u ON u.collection_hash = k.column1"
        " AND u.period_start = k.column2 AND u.period_end = k.column3"
        " WHERE u.status = 'done'"
    )


# Every done unit of one window: a range scan of the primary key's period_start prefix.
_DONE_IN_WINDOW = (
    "SELECT collection_hash FROM units"
    " WHERE period_start = ? AND period_end = ? AND status = 'done'"
)


class StateStore:
    """SQLite (WAL, synchronous=NORMAL) record of each unit's outcome, and the staging area."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], datetime] = _utcnow,
        readonly: bool = False,
    ) -> None:
        """Open (creating it and its folder if need be) the store at ``path``.

        ``readonly`` opens an existing store for reading only: no folder, file or schema is
        created, nothing is written (see :meth:`_connect_readonly`), and a missing file or one
        from a newer harvester is refused with a HarvesterError.
        """
        self.path = path
        self._clock = clock
        if readonly:
            self._db = self._connect_readonly()
            self._check_version(self._db.execute("PRAGMA user_version").fetchone()[0])
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: every write below opens its own explicit transaction.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL survives a process kill; only an OS crash may lose the last commits.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    def _connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection that creates no file beside the database.

        SQLite's ``mode=ro`` still creates the ``-wal`` and ``-shm`` files of a WAL database
        (and leaves them behind), so without a ``-wal`` file (no run has the store open, and
        the last one closed it cleanly) the file is opened ``immutable``: no lock, no side
        files. A run starting meanwhile writes to its new ``-wal``, not to the file read here.
        With a ``-wal`` file, plain ``mode=ro`` reads what a live or killed run committed.
        """
        if not self.path.is_file():
            raise HarvesterError(f"{self.path}: no state database here (nothing to read)")
        wal = self.path.with_name(f"{self.path.name}-wal")
        flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
        uri = f"{self.path.absolute().as_uri()}?{flags}"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA query_only = ON")  # this connection only: nothing is written
        return db

    def _check_version(self, version: int) -> None:
        """Refuse a file without the schema, or with a newer one, for reading."""
        if version == 0:
            raise HarvesterError(f"{self.path}: not a harvester state database (no schema)")
        if version != SCHEMA_VERSION:
            raise HarvesterError(
                f"{self.path}: state schema version {version} is not the one this"
                f" harvester understands ({SCHEMA_VERSION})"
            )

    def _migrate(self) -> None:
        """Create the schema in a new file; refuse a file from a newer harvester."""
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # Statement by statement: executescript() would commit our transaction first.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise HarvesterError(
                    f"{self.path}: state schema version {version} is not the one this"
                    f" harvester understands ({SCHEMA_VERSION})"
                )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: committed on success, rolled back on any error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _now(self) -> str:
        """The clock's time as stored: ISO 8601 UTC."""
        return self._clock().astimezone(UTC).isoformat()

    def close(self) -> None:
        """Close the database; the store is unusable afterwards."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def done_among(self, units: Sequence[Unit]) -> set[Unit]:
        """Which of ``units`` are done."""
        # A plan's batch is mostly one window (a day: every unit). Such a window is read
        # whole with one range scan, three times faster than a primary-key search per unit;
        # the scan's cost follows the window's done units in the state, which for one job
        # per output are the batch's own.
        windows: dict[tuple[date, date], dict[str, Unit]] = {}
        for u in units:
            windows.setdefault((u.start, u.end), {})[u.collection_hash] = u
        done: set[Unit] = set()
        scattered: list[Unit] = []
        for (start, end), by_hash in windows.items():
            if len(by_hash) < SHARED_WINDOW_UNITS:
                scattered.extend(by_hash.values())
                continue
            rows = self._db.execute(_DONE_IN_WINDOW, (start.isoformat(), end.isoformat()))
            done.update(by_hash[h] for (h,) in rows if h in by_hash)
        for i in range(0, len(scattered), CHUNK_UNITS):
            by_key = {_key(u): u for u in scattered[i : i + CHUNK_UNITS]}
            params = [value for key in by_key for value in key]
            rows = self._db.execute(_done_among_sql(len(by_key)), params)
            done.update(by_key[row] for row in rows)
        return done

    def stage(self, results: Sequence[Fetched]) -> None:
        """Keep each result's answer until its partition is written (one transaction)."""
        now = self._now()
        rows = [(*_key(r.unit), _encode(r), now) for r in results]
        with self._transaction():
            self._db.executemany(_STAGE, rows)

    def staged_periods(self) -> list[date]:
        """The distinct period_start values that have staged units, ascending."""
        rows = self._db.execute(
            "SELECT DISTINCT period_start FROM units WHERE status = 'staged' ORDER BY 1"
        )
        return [date.fromisoformat(start) for (start,) in rows]

    def staged(self, period_start: date) -> list[Fetched]:
        """The staged results of one period, ordered by collection and period end."""
        rows = self._db.execute(
            "SELECT collection_hash, period_start, period_end, payload FROM units"
            " WHERE status = 'staged' AND period_start = ?"
            " ORDER BY collection_hash, period_end",
            (period_start.isoformat(),),
        )
        return [_decode(_unit(h, s, e), payload) for h, s, e, payload in rows]

    def mark_done(self, units: Sequence[Unit]) -> None:
        """Record units as written to Parquet and drop their payloads (one transaction)."""
        now = self._now()
        rows = [(*_key(u), now) for u in units]
        with self._transaction():
            self._db.executemany(_MARK_DONE, rows)

    def mark_failed(self, unit: Unit, *, kind: str, reason: str, attempts: int) -> None:
        """Record a unit's failure; a done or staged unit keeps its status (and its rows)."""
        with self._transaction():
            self._db.execute(_MARK_FAILED, (*_key(unit), kind, reason, attempts, self._now()))

    def failed(self) -> list[FailedUnit]:
        """The units whose status is failed, ordered by period then collection."""
        rows = self._db.execute(
            "SELECT collection_hash, period_start, period_end, error_kind, error_reason,"
            " attempts, failed_at FROM units WHERE status = 'failed'"
            " ORDER BY period_start, collection_hash, period_end"
        )
        return [
            FailedUnit(_unit(h, s, e), kind, reason, attempts, failed_at)
            for h, s, e, kind, reason, attempts, failed_at in rows
        ]

    def counts(self) -> dict[str, int]:
        """How many units are done, staged and failed."""
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self._db.execute("SELECT status, count(*) FROM units GROUP BY status"):
            counts[status] = n
        return counts

    def record_run(self, summary: Mapping[str, Any]) -> None:
        """Append one run's summary (as JSON, redacted before encoding) to the runs table."""
        text = json.dumps(redact_data(summary), sort_keys=True, default=lambda o: redact(str(o)))
        with self._transaction():
            self._db.execute(
                "INSERT INTO runs (recorded_at, summary) VALUES (?, ?)", (self._now(), text)
            )


class OutputLock:
    """One writer per output folder: an fcntl.flock on output/_state/harvester.lock.

    The kernel releases a flock when its process dies, so a killed run never blocks the next.
    The file itself is never deleted (deleting a lock file lets two runs lock two files).
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output / STATE_DIR / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False) -> None:
        """Take the lock; raise LockedError if another run holds it, unless ``wait``."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this lock object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(
                f"{self.output} is being written by another harvester run ({holder});"
                " this run exits 4; wait for it to finish, or use --wait to wait"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _write_holder(fd)

    def release(self) -> None:
        """Let the next run in; does nothing if the lock is not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no stale pid for a reader who finds the file unlocked
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _write_holder(fd: int) -> None:
    """Record who holds the lock, for the message another run shows."""
    text = json.dumps({"pid": os.getpid(), "started": _utcnow().isoformat(timespec="seconds")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _read_holder(fd: int) -> str:
    """'pid N, started T' from the lock file, or a placeholder if not yet written."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"pid {holder['pid']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "pid unknown, started at an unknown time"
