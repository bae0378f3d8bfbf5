"""A key's rate budget in a SQLite file, shared by the harvester processes of one host."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from harvester.errors import BudgetUnavailable
from harvester.pacing.protocol import BUDGET_DIR_ENV, Admission, Clock

__all__ = ["FileStore"]

# A start's ``seq`` grows with its time: stamps read the clock inside the file's write lock, so
# the n-th most recent start is one lookup by ``seq``, whatever the window's size.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS starts (seq INTEGER PRIMARY KEY, t REAL NOT NULL);
CREATE INDEX IF NOT EXISTS starts_t ON starts (t);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
BUSY_TIMEOUT_SECONDS = 5.0  # every transaction is a few statements: a wait this long is a fault
LOCK_RETRY_SECONDS = 0.0005
CLEANUP_EVERY = 32  # stamps between two sweeps of what no window can hold any more


def _busy(exc: sqlite3.OperationalError) -> bool:
    """True when another process holds the file's write lock."""
    return "locked" in str(exc) or "busy" in str(exc)


def _boot_id() -> str:
    """The kernel's boot id: monotonic times recorded under another boot mean nothing now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class FileStore:
    """A key's budget in a SQLite file shared by the processes of one host.

    Times are the host's monotonic clock (one clock for every process of a boot); a file from
    an earlier boot is emptied on open. Each operation is one short ``BEGIN IMMEDIATE``
    transaction: the file's lock makes check-and-lease atomic across processes. Synchronous on
    purpose: a transaction takes well under a millisecond, less than handing it to a thread.
    """

    def __init__(
        self,
        path: Path,
        windows: Sequence[tuple[int, float]],
        *,
        lease_seconds: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.path = path
        self._windows = list(windows)
        self._longest = max(seconds for _, seconds in self._windows)
        self._lease = lease_seconds
        self._clock = clock
        self._stamps = 0
        # The live leases and the pause; then, per window, the start that binds it.
        self._state_sql = (
            "SELECT (SELECT count(*) FROM leases WHERE expires > ?),"
            " (SELECT value FROM meta WHERE name = 'pause')"
        )
        self._nth_sql = "SELECT " + ", ".join(
            "(SELECT t FROM starts WHERE seq = (SELECT max(seq) FROM starts) - ?)"
            for _ in self._windows
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(
                path, timeout=0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA synchronous=OFF")  # a budget lost to a power cut is harmless
            self._set_up()
        except (OSError, sqlite3.Error) as exc:
            raise BudgetUnavailable(
                f"the rate budget file {path} cannot be used: {exc} "
                f"({BUDGET_DIR_ENV} may name another folder)",
                before_any_call=True,
            ) from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[sqlite3.Connection]:
        """One atomic read-modify-write; sqlite errors become BudgetUnavailable.

        The file's lock is taken without SQLite's busy handler, which sleeps in the event loop:
        a process blocked there for milliseconds would send, late, requests it had already
        stamped. A busy file is retried after a short asynchronous sleep instead.
        """
        db = self._db
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise BudgetUnavailable(
                        f"the rate budget file {self.path} failed: {exc}"
                    ) from exc
                await asyncio.sleep(LOCK_RETRY_SECONDS)
        try:
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BudgetUnavailable(f"the rate budget file {self.path} failed: {exc}") from exc

    def _check_boot(self) -> None:
        """Empty a file written under another boot (its monotonic times mean nothing now)."""
        db, boot = self._db, _boot_id()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT value FROM meta WHERE name = 'boot'").fetchone()
            if row is None or row[0] != boot:
                db.execute("DELETE FROM starts")
                db.execute("DELETE FROM leases")
                db.execute("DELETE FROM meta")
                db.execute("INSERT INTO meta VALUES ('boot', ?)", (boot,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _set_up(self) -> None:
        """WAL, the tables, the boot check; before any call, so waiting for a busy file may
        block."""
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
                self._check_boot()
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(LOCK_RETRY_SECONDS)

    async def reserve(self) -> Admission:
        """Lease a place if a call fits every window now; else how long until it may.

        Two reads (live leases and the pause; each window's binding start) in one
        transaction: the budget is asked once per call, or more while it waits.
        """
        now = self._clock()
        async with self._transaction() as db:
            unsent, paused = db.execute(self._state_sql, (now,)).fetchone()
            needs = [calls - unsent for calls, _ in self._windows]
            if min(needs) <= 0:
                return (math.inf, False)
            ready = float(paused) if paused is not None else now
            nths = db.execute(self._nth_sql, [need - 1 for need in needs]).fetchone()
            for nth, (_, seconds) in zip(nths, self._windows, strict=True):
                if nth is not None:
                    ready = max(ready, nth + seconds)
            if ready > now:
                return (ready - now, unsent == 0)
            cursor = db.execute("INSERT INTO leases (expires) VALUES (?)", (now + self._lease,))
            return str(cursor.lastrowid)

    async def stamp(self, lease: str) -> None:
        """Record the start now, whether or not the lease had lapsed: the call is going out.
        Every so often, forget the starts past the longest window and the lapsed leases."""
        self._stamps += 1
        async with self._transaction() as db:
            now = self._clock()
            db.execute("DELETE FROM leases WHERE id = ?", (int(lease),))
            db.execute("INSERT INTO starts (t) VALUES (?)", (now,))
            if self._stamps % CLEANUP_EVERY == 0:
                db.execute("DELETE FROM starts WHERE t <= ?", (now - self._longest,))
                db.execute("DELETE FROM leases WHERE expires <= ?", (now,))

    async def free(self, lease: str) -> None:
        """Drop the lease."""
        async with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE id = ?", (int(lease),))

    async def pause(self, seconds: float) -> None:
        """Extend the key's pause to ``seconds`` from now."""
        until = self._clock() + seconds
        async with self._transaction() as db:
            db.execute(
                "INSERT INTO meta VALUES ('pause', ?) ON CONFLICT (name) DO UPDATE"
                " SET value = max(CAST(value AS REAL), excluded.value)",
                (until,),
            )

    async def close(self) -> None:
        """Close the file."""
        self._db.close()
