"""What is done, staged, failed or gone: a SQLite record per unit, and the staging area.

A unit is identified by its collection and its calendar *period* (the day, the ISO week's
Monday, the month's first day; one period per collection for ``range``), not by the window
sent: a clipped week that grows overnight is the same unit, fetched again and replacing its
rows. Each row keeps the window last staged or written (``period_start``/``period_end``),
when that answer was fetched (``fetched_at``), whether it is *final* (fetched on a day after its
window ended: :func:`harvester.model.is_final`) and whether pages were asked for.

A fetched unit is first *staged* here (its answer kept as a compact JSON payload), so a killed
run loses at most the units in flight. When its output partition is complete the sink writes
it, and :meth:`StateStore.mark_done` flips the units to *done* in one transaction. While a
unit is staged over rows the dataset holds, ``written_start``/``written_end``/``written_at``/
``written_pages`` describe those rows (their window, ``fetched_at`` and pages), so the commit
can remove them even when they sit in another partition, and can tell when they are newer
than the staged answer (another run wrote them meanwhile): then the staged answer is dropped
and the unit is done as the dataset holds it (:meth:`StateStore.superseded`). A crash between
the Parquet rename and ``mark_done`` is harmless: the next run rewrites from staging.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from functools import cache, lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, ParamSpec, Self, TypeVar

import orjson

from harvester.errors import HarvesterError, JobError, Problem, StateError
from harvester.job.location import Location, user_cache_dir
from harvester.lake.lock import OutputLock
from harvester.layout import STATE_DIR, STATE_FILE
from harvester.model import GRANULARITIES, Fetched, Fingerprint, Unit, is_final, period_of
from harvester.redact import redact, redact_data
from harvester.state.tables import FILES_SCHEMA, READABLE_VERSIONS, SCHEMA_VERSION, upgrade

__all__ = [
    "FailedUnit",
    "Held",
    "OutputLock",
    "StateStore",
    "Stored",
    "default_state_path",
]

# 300 units x 2 values stays well under SQLite's historical limit of 999 bound parameters.
CHUNK_UNITS = 300
# A period shared by this many units of a batch is read whole (see lookup).
SHARED_PERIOD_UNITS = 16

STAGED = "staged"
DONE = "done"
FAILED = "failed"
GONE = "gone"
STATUSES = (DONE, STAGED, FAILED, GONE)

# A done unit staged again keeps what the dataset holds (its window, when it was fetched, its
# pages), to remove those rows at the commit, or to keep them when they are the newer answer.
# (SQLite evaluates every SET expression on the row as it was.)
_STAGE = """
INSERT INTO units (collection_hash, period, period_start, period_end, status, final, pages,
                   fetched_at, payload, staged_at)
VALUES (?, ?, ?, ?, 'staged', ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    written_start = CASE WHEN status = 'done' THEN period_start ELSE written_start END,
    written_end = CASE WHEN status = 'done' THEN period_end ELSE written_end END,
    written_at = CASE WHEN status = 'done' THEN fetched_at ELSE written_at END,
    written_pages = CASE WHEN status = 'done' THEN pages ELSE written_pages END,
    status = 'staged', period_start = excluded.period_start, period_end = excluded.period_end,
    final = excluded.final, pages = excluded.pages, fetched_at = excluded.fetched_at,
    payload = excluded.payload, staged_at = excluded.staged_at
"""

_MARK_DONE = """
UPDATE units SET status = 'done', payload = NULL, written_start = NULL, written_end = NULL,
                 written_at = NULL, written_pages = NULL, done_at = ?
WHERE period = ? AND collection_hash = ? AND status = 'staged'
"""

# A staged answer older than the rows the dataset holds: the unit is done as they are.
_KEEP_WRITTEN = """
UPDATE units SET status = 'done', period_start = written_start, period_end = written_end,
                 fetched_at = written_at, pages = coalesce(written_pages, pages), final = ?,
                 payload = NULL, written_start = NULL, written_end = NULL, written_at = NULL,
                 written_pages = NULL, done_at = ?
WHERE period = ? AND collection_hash = ? AND status = 'staged' AND written_at IS NOT NULL
"""

# What the dataset holds under a staged unit, as read from it (another run may have written).
_LEARN_WRITTEN = """
UPDATE units SET written_start = ?, written_end = ?, written_at = ?, written_pages = ?
WHERE period = ? AND collection_hash = ? AND status = 'staged'
"""

# A failed refresh of a done (or staged) unit must not hide the good rows: keep the status.
_MARK_FAILED = """
INSERT INTO units (collection_hash, period, period_start, period_end, status,
                   error_kind, error_reason, attempts, failed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    status = CASE WHEN status IN ('done', 'staged') THEN status ELSE excluded.status END,
    period_start = CASE WHEN status IN ('done', 'staged') THEN period_start
                        ELSE excluded.period_start END,
    period_end = CASE WHEN status IN ('done', 'staged') THEN period_end
                      ELSE excluded.period_end END,
    error_kind = excluded.error_kind, error_reason = excluded.error_reason,
    attempts = excluded.attempts, failed_at = excluded.failed_at
"""


# A unit the dataset holds is done, unless the state has it staged, failed or gone.
_ADOPT = """
INSERT INTO units (collection_hash, period, period_start, period_end, status, final, pages,
                   fetched_at, done_at)
VALUES (?, ?, ?, ?, 'done', ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    period_start = excluded.period_start, period_end = excluded.period_end,
    final = excluded.final, pages = excluded.pages, fetched_at = excluded.fetched_at
WHERE status = 'done'
"""


class Held(NamedTuple):
    """What the dataset holds for a unit's period: its window, when and whether with pages."""

    unit: Unit
    fetched_at: datetime
    pages: bool  # pages were asked for (or, for rows from before that was recorded, came)


class Stored(NamedTuple):
    """What the state holds for a unit's period."""

    status: str
    start: date
    end: date
    final: bool
    pages: bool


class FailedUnit(NamedTuple):
    """A unit whose last outcome is a failure (or *gone*), with the error recorded for it."""

    unit: Unit
    kind: str
    reason: str
    attempts: int
    failed_at: str  # ISO 8601, UTC


def default_state_path(output: Path | Location) -> Path:
    """Where a run writing to ``output`` keeps its state database.

    Beside a local output; for an object store, in the per-user cache, in a folder named by a
    hash of the output's URI (the dataset is the record of what is done: losing it costs no
    calls).
    """
    if isinstance(output, Location) and not output.is_local:
        return user_cache_dir() / output.cache_key() / STATE_FILE
    return Path(output) / STATE_DIR / STATE_FILE


def _stamp(moment: datetime) -> str:
    """A ``fetched_at`` as stored: ISO 8601, UTC, always with microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _unit(collection_hash: str, start: str, end: str) -> Unit:
    """A unit back from its stored window."""
    return Unit(collection_hash, date.fromisoformat(start), date.fromisoformat(end))


def _encode(result: Fetched) -> str:
    """The compact payload: [fetched_at, impressions, views, time_spent, downloads, pages]."""
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


def _decode(unit: Unit, payload: str, pages_requested: bool) -> Fetched:
    """Exactly the Fetched that ``_encode`` was given (whether it asked for pages: the row's)."""
    fetched_at, impressions, views, time_spent, downloads, pages = orjson.loads(payload)
    return Fetched(
        unit=unit,
        fetched_at=datetime.fromisoformat(fetched_at),
        impressions=impressions,
        views=views,
        time_spent=time_spent,
        downloads=downloads,
        pages=tuple(map(tuple, pages)),  # each page is [page, views, clicks, time_spent]
        pages_requested=pages_requested,
    )


@cache
def _lookup_sql(n: int) -> str:
    """The lookup for ``n`` (period, hash) keys, cached so sqlite3 reuses the statement.

    A join against a VALUES list, not ``(a, b) IN (VALUES ...)``: SQLite 3.40 answers the
    row-value IN form with a full table scan, the join with primary-key searches.
    """
    values = ",".join(["(?,?)"] * n)
    return (
        "SELECT u.collection_hash, u.period, u.status, u.period_start, u.period_end,"
        " u.final, u.pages"
        f" FROM (VALUES {values}) AS k"
        " JOIN units AS u ON u.period = k.column1 AND u.collection_hash = k.column2"
    )


# Every row of one period: a range scan of the primary key's period prefix.
_IN_PERIOD = (
    "SELECT collection_hash, status, period_start, period_end, final, pages"
    " FROM units WHERE period = ?"
)


P = ParamSpec("P")
R = TypeVar("R")
StateStoreT = TypeVar("StateStoreT")


def state_error(path: Path, exc: sqlite3.Error) -> StateError:
    """SQLite's error as ours: the state's path, what went wrong, and what to do about it."""
    reason = str(exc) or type(exc).__name__
    text = reason.lower()
    if "locked" in text or "busy" in text:
        advice = "another process holds it: let it finish (two runs never share one state)"
    elif "readonly" in text or "read-only" in text or "unable to open" in text:
        advice = "check that its folder exists and can be written (permissions, a read-only disk)"
    elif "full" in text or "disk i/o" in text:
        advice = "check the disk: free space, or errors reading it"
    elif not isinstance(exc, sqlite3.OperationalError):  # malformed, not a database
        advice = (
            f"the file is damaged: move it aside (mv '{path}' '{path}.damaged') and run again;"
            " the dataset is the record of what is done, so the next run rebuilds the state"
            " from it (collections recorded as gone are asked for once more)"
        )
    else:
        advice = "if it persists, move the file aside: the next run rebuilds it from the dataset"
    return StateError(f"state {path}: {reason}: {advice}")


def _named(method: Callable[P, R]) -> Callable[P, R]:
    """``method`` with SQLite's errors raised as StateError naming the state's path."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            # The file or the disk (malformed, not a database, locked, full); not our bugs
            # (a bad parameter, a broken constraint), which keep their own type.
            store: Any = args[0]
            if type(exc) is not sqlite3.DatabaseError and not isinstance(
                exc, sqlite3.OperationalError
            ):
                raise
            if store.readonly and "readonly" in str(exc):  # a write through a reader: a bug
                raise
            raise state_error(store.path, exc) from exc

    return wrapper


def _errors_named(cls: type[StateStoreT]) -> type[StateStoreT]:
    """Every public method of the class (and its constructor) raises StateError, never a bare
    sqlite3 error: "database disk image is malformed" alone names no file."""
    for name, value in list(vars(cls).items()):
        if callable(value) and (name == "__init__" or not name.startswith("_")):
            setattr(cls, name, _named(value))
    return cls


@_errors_named
class StateStore:
    """SQLite (WAL, synchronous=NORMAL) record of each unit's outcome, and the staging area.

    ``granularity`` fixes how windows map to periods; a new store records it, an existing one
    must match it (None: take the recorded one). ``readonly`` opens an existing file without
    writing anything to it (for ``status`` and dry runs).
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], datetime] = _utcnow,
        granularity: str | None = None,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self._clock = clock
        self.readonly = readonly
        if readonly:
            self._db = self._connect_readonly()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every write below opens its own explicit transaction.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL survives a process kill; only an OS crash may lose commits.
            self._db.execute("PRAGMA synchronous = NORMAL")
        self.granularity = self._open(granularity)

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

    # --- schema -------------------------------------------------------------------------------

    def _open(self, granularity: str | None) -> str:
        """Create or upgrade the schema; return the granularity the store is keyed by."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HarvesterError(
                f"{self.path}: state schema version {version} is not the one this"
                f" harvester understands ({SCHEMA_VERSION}); it was written by a newer one"
            )
        if version == 0 and self.readonly:
            raise HarvesterError(f"{self.path}: not a harvester state database (no schema)")
        if version < SCHEMA_VERSION and not (self.readonly and version in READABLE_VERSIONS):
            if self.readonly:
                raise HarvesterError(
                    f"{self.path}: state schema version {version} predates this harvester;"
                    " the next run upgrades it"
                )
            with self._transaction():
                upgrade(self._db, version, granularity or "day")
        recorded = self.get_meta("granularity")
        if granularity is not None and recorded is not None and recorded != granularity:
            raise JobError(
                [
                    Problem(
                        str(self.path),
                        "granularity",
                        f"this state records {recorded!r} units; the job asks for"
                        f" {granularity!r}: use another output (and state) for it",
                    )
                ]
            )
        if recorded is None and not self.readonly:
            self.set_meta("granularity", granularity or "day")
        if not self.readonly:
            self._db.execute(FILES_SCHEMA)
        result = recorded or granularity or "day"
        if result not in GRANULARITIES:
            raise HarvesterError(f"{self.path}: unknown granularity {result!r} recorded")
        return result

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

    def _period(self, unit: Unit) -> str:
        return period_of(self.granularity, unit.start).isoformat()

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

    # --- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """A recorded setting (the output's id, the granularity), or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Record a setting."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def is_empty(self) -> bool:
        """True when no unit has ever been recorded here."""
        return self._db.execute("SELECT 1 FROM units LIMIT 1").fetchone() is None

    # --- what is done ---------------------------------------------------------------------------

    def lookup(self, units: Sequence[Unit]) -> dict[Unit, Stored]:
        """What the state holds for each of ``units``' periods (units with no row are absent)."""
        # A plan's batch is one calendar window: every unit shares one period. Such a period
        # is read whole with one range scan, three times faster than a search per unit; and
        # the period is worked out once per window start, not once per unit.
        by_start: dict[date, list[Unit]] = {}
        for u in units:
            by_start.setdefault(u.start, []).append(u)
        by_period: dict[str, dict[str, Unit]] = {}
        for start, group in by_start.items():
            hashes = by_period.setdefault(period_of(self.granularity, start).isoformat(), {})
            hashes.update({u.collection_hash: u for u in group})
        found: dict[Unit, Stored] = {}
        scattered: list[tuple[str, str]] = []
        for period, by_hash in by_period.items():
            if len(by_hash) < SHARED_PERIOD_UNITS:
                scattered.extend((period, h) for h in by_hash)
                continue
            for h, status, start, end, final, pages in self._db.execute(_IN_PERIOD, (period,)):
                unit = by_hash.get(h)
                if unit is not None:
                    found[unit] = _stored(status, start, end, final, pages)
        for i in range(0, len(scattered), CHUNK_UNITS):
            keys = scattered[i : i + CHUNK_UNITS]
            params = [value for key in keys for value in key]
            for h, period, *row in self._db.execute(_lookup_sql(len(keys)), params):
                found[by_period[period][h]] = _stored(*row)
        return found

    # --- staging and commits -----------------------------------------------------------------

    def stage(self, results: Sequence[Fetched]) -> None:
        """Keep each result's answer until its partition is written (one transaction)."""
        now = self._now()
        rows = [
            (
                r.unit.collection_hash,
                self._period(r.unit),
                r.unit.start.isoformat(),
                r.unit.end.isoformat(),
                int(is_final(r.unit.end, r.fetched_at)),
                int(r.pages_requested),
                _stamp(r.fetched_at),
                _encode(r),
                now,
            )
            for r in results
        ]
        with self._transaction():
            self._db.executemany(_STAGE, rows)

    def staged_periods(self) -> list[date]:
        """The distinct window starts (output partitions) that have staged units, ascending."""
        rows = self._db.execute(
            "SELECT DISTINCT period_start FROM units WHERE status = 'staged' ORDER BY 1"
        )
        return [date.fromisoformat(start) for (start,) in rows]

    def staged(self, period_start: date) -> list[Fetched]:
        """The staged results of one partition, ordered by collection and period end."""
        rows = self._db.execute(
            "SELECT collection_hash, period_start, period_end, payload, pages FROM units"
            " WHERE status = 'staged' AND period_start = ?"
            " ORDER BY collection_hash, period_end",
            (period_start.isoformat(),),
        )
        return [_decode(_unit(h, s, e), payload, bool(p)) for h, s, e, payload, p in rows]

    def _written(self, keys: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str, str, str]]:
        """(period, hash, written_end, written_at) of the staged units among ``keys`` that are
        staged over rows of the dataset."""
        for i in range(0, len(keys), CHUNK_UNITS):
            chunk = keys[i : i + CHUNK_UNITS]
            values = ",".join(["(?,?)"] * len(chunk))
            yield from self._db.execute(
                "SELECT u.period, u.collection_hash, u.written_end, u.written_at"
                f" FROM (VALUES {values}) AS k JOIN units AS u"
                " ON u.period = k.column1 AND u.collection_hash = k.column2"
                " WHERE u.status = 'staged' AND u.written_at IS NOT NULL",
                [value for key in chunk for value in key],
            )

    def superseded(self, results: Sequence[Fetched]) -> list[Fetched]:
        """Of staged ``results``, those the dataset already holds a newer answer for."""
        keys = {(self._period(r.unit), r.unit.collection_hash): r for r in results}
        return [
            keys[(period, h)]
            for period, h, _, written_at in self._written(list(keys))
            if datetime.fromisoformat(written_at) > keys[(period, h)].fetched_at
        ]

    def keep_written(self, units: Sequence[Unit]) -> None:
        """Drop the staged answers of ``units`` for the newer rows the dataset holds: the
        units are done as those rows are (one transaction)."""
        now = self._now()
        keys = [(self._period(u), u.collection_hash) for u in units]
        rows = [
            (int(is_final(date.fromisoformat(end), datetime.fromisoformat(at))), now, period, h)
            for period, h, end, at in self._written(keys)
        ]
        with self._transaction():
            self._db.executemany(_KEEP_WRITTEN, rows)

    def replaced(self, units: Sequence[Unit]) -> list[Unit]:
        """For staged ``units``, the older windows of their periods the dataset still holds."""
        keys = [(self._period(u), u.collection_hash) for u in units]
        old: list[Unit] = []
        for i in range(0, len(keys), CHUNK_UNITS):
            chunk = keys[i : i + CHUNK_UNITS]
            values = ",".join(["(?,?)"] * len(chunk))
            rows = self._db.execute(
                "SELECT u.collection_hash, u.written_start, u.written_end, u.period_start,"
                f" u.period_end FROM (VALUES {values}) AS k JOIN units AS u"
                " ON u.period = k.column1 AND u.collection_hash = k.column2"
                " WHERE u.status = 'staged' AND u.written_start IS NOT NULL",
                [value for key in chunk for value in key],
            )
            old.extend(_unit(h, ws, we) for h, ws, we, s, e in rows if (ws, we) != (s, e))
        return old

    def mark_done(
        self, units: Sequence[Unit], files: Mapping[tuple[str, date], Fingerprint | None] = {}
    ) -> None:
        """Record staged units as written and drop their payloads (one transaction).

        ``files``: the partition files the commit wrote (their fingerprints) or removed (None).
        """
        now = self._now()
        rows = [(now, self._period(u), u.collection_hash) for u in units]
        with self._transaction():
            self._db.executemany(_MARK_DONE, rows)
            self._record_files(files)

    # --- the dataset's files, as the commits left them ----------------------------------------

    def _record_files(self, files: Mapping[tuple[str, date], Fingerprint | None]) -> None:
        gone = [(name, start.isoformat()) for (name, start), f in files.items() if f is None]
        kept = [
            (name, start.isoformat(), f.size, f.mtime_ns)
            for (name, start), f in files.items()
            if f is not None
        ]
        self._db.executemany("DELETE FROM files WHERE dataset = ? AND period_start = ?", gone)
        self._db.executemany(
            "INSERT INTO files (dataset, period_start, size, mtime_ns) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns",
            kept,
        )

    def files(self) -> dict[tuple[str, date], Fingerprint]:
        """Each partition file as the last commit (or check) recorded it."""
        try:
            rows = self._db.execute("SELECT dataset, period_start, size, mtime_ns FROM files")
            return {(n, date.fromisoformat(s)): Fingerprint(z, m) for n, s, z, m in rows}
        except sqlite3.OperationalError:  # a read-only state from before the table existed
            return {}

    def done_starts(self, low: date, high: date) -> set[date]:
        """The partitions (window starts) holding done units, within [low, high]."""
        rows = self._db.execute(
            "SELECT DISTINCT period_start FROM units WHERE status = 'done'"
            " AND period_start BETWEEN ? AND ?",
            (low.isoformat(), high.isoformat()),
        )
        return {date.fromisoformat(s) for (s,) in rows}

    def in_partition(self, period_start: date) -> dict[str, Stored]:
        """What the state holds for units whose window starts on ``period_start``, by hash."""
        rows = self._db.execute(
            _IN_PERIOD + " AND period_start = ?",
            (period_of(self.granularity, period_start).isoformat(), period_start.isoformat()),
        )
        return {h: _stored(status, s, e, final, pages) for h, status, s, e, final, pages in rows}

    def reconcile(
        self,
        adopt: Sequence[Held],
        drop: Sequence[Unit],
        files: Mapping[tuple[str, date], Fingerprint | None],
        written: Sequence[Held] = (),
    ) -> None:
        """Take the dataset's word (one transaction): ``adopt`` what it holds as done, ``drop``
        done units whose rows are gone, note what it holds under staged units (``written``),
        record the files as listed."""
        now = self._now()
        rows = [
            (h.unit.collection_hash, self._period(h.unit), h.unit.start.isoformat(),
             h.unit.end.isoformat(), int(is_final(h.unit.end, h.fetched_at)), int(h.pages),
             _stamp(h.fetched_at), now)
            for h in adopt
        ]  # fmt: skip
        under = [
            (h.unit.start.isoformat(), h.unit.end.isoformat(), _stamp(h.fetched_at),
             int(h.pages), self._period(h.unit), h.unit.collection_hash)
            for h in written
        ]  # fmt: skip
        gone = [(self._period(u), u.collection_hash) for u in drop]
        with self._transaction():
            self._db.executemany(
                "DELETE FROM units WHERE period = ? AND collection_hash = ? AND status = 'done'",
                gone,
            )
            self._db.executemany(_ADOPT, rows)
            self._db.executemany(_LEARN_WRITTEN, under)
            self._record_files(files)

    def mark_failed(
        self, unit: Unit, *, kind: str, reason: str, attempts: int, gone: bool = False
    ) -> None:
        """Record a unit's failure (``gone``: its collection is deleted or not ours).

        A done or staged unit keeps its status, its window and its rows.
        """
        status = GONE if gone else FAILED
        row = (
            unit.collection_hash,
            self._period(unit),
            unit.start.isoformat(),
            unit.end.isoformat(),
            status,
            kind,
            reason,
            attempts,
            self._now(),
        )
        with self._transaction():
            self._db.execute(_MARK_FAILED, row)

    def forget(self, units: Iterable[Unit]) -> None:
        """Drop what is recorded for these units' periods: the next run fetches them again."""
        rows = [(self._period(u), u.collection_hash) for u in units]
        with self._transaction():
            self._db.executemany("DELETE FROM units WHERE period = ? AND collection_hash = ?", rows)

    # --- reading back ----------------------------------------------------------------------------

    def failed(self, *, gone: bool = False) -> list[FailedUnit]:
        """The units whose status is failed (or gone), ordered by period then collection."""
        status = "'gone'" if gone else "'failed'"
        rows = self._db.execute(
            "SELECT collection_hash, period_start, period_end, error_kind, error_reason,"
            f" attempts, failed_at FROM units WHERE status = {status}"
            " ORDER BY period, collection_hash"
        )
        return [
            FailedUnit(_unit(h, s, e), kind, reason, attempts, failed_at)
            for h, s, e, kind, reason, attempts, failed_at in rows
        ]

    def gone_collections(self) -> set[str]:
        """The collections the API said are deleted, not ours, or unknown (43/46)."""
        rows = self._db.execute("SELECT DISTINCT collection_hash FROM units WHERE status = 'gone'")
        return {h for (h,) in rows}

    def counts(self) -> dict[str, int]:
        """How many units are done, staged, failed and gone, and how many done are provisional."""
        counts = dict.fromkeys((*STATUSES, "provisional"), 0)
        for status, final, n in self._db.execute(
            "SELECT status, final, count(*) FROM units GROUP BY status, final"
        ):
            counts[status] += n
            if status == DONE and not final:
                counts["provisional"] += n
        return counts

    def counts_by_collection(self) -> dict[str, dict[str, int]]:
        """:meth:`counts` (without ``provisional``) for each collection hash."""
        result: dict[str, dict[str, int]] = {}
        for collection, status, n in self._db.execute(
            "SELECT collection_hash, status, count(*) FROM units GROUP BY collection_hash, status"
        ):
            result.setdefault(collection, dict.fromkeys(STATUSES, 0))[status] += n
        return result

    def record_run(self, summary: Mapping[str, Any]) -> None:
        """Append one run's summary (as JSON, redacted before encoding) to the runs table."""
        text = json.dumps(redact_data(summary), sort_keys=True, default=lambda o: redact(str(o)))
        with self._transaction():
            self._db.execute(
                "INSERT INTO runs (recorded_at, summary) VALUES (?, ?)", (self._now(), text)
            )


# The units of a plan's batch share one window, so their rows are a handful of distinct values:
# one immutable Stored per value, not a million (date parsing was most of a lookup's time).
@lru_cache(maxsize=4096)
def _stored(status: str, start: str, end: str, final: int, pages: int) -> Stored:
    return Stored(
        status, date.fromisoformat(start), date.fromisoformat(end), bool(final), bool(pages)
    )
