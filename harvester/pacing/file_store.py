"""A key's rate budget in a SQLite file, shared by the harvester processes of one host.

The file holds the rule of :mod:`harvester.pacing.limiter`: ``leases`` (calls admitted whose
attempts have not ended; each holds a place in every window until it ends or lapses) and
``ends`` (when the last calls ended). Times are the host's monotonic clock, read inside the
file's write lock, so the ends are recorded in time order and one lookup finds the ``k``-th
most recent. An end row may stand for several calls (``n``); ``c`` counts the calls up to and
including it, so the ``k``-th most recent call is in the first row with ``c > top - k``.

History is never trusted beyond what the file can vouch for:

- *a new file where one was before* (the file deleted, or replaced: every process notices at
  its next operation, by the file's inode, and re-joins the new one, bringing its own calls
  still in a window and its live leases): the budget starts as if the window before had been
  spent in full, ``calls`` ends now, and as if as many calls as the smallest window holds
  were still in flight, until their leases would lapse. A ``<digest>.known`` mark beside the
  file says one existed; a budget never seen in the folder starts empty.
- *another boot* (the boot id, where it can be read, differs; or the file's last clock reading
  is ahead of the clock, which a monotonic clock cannot be within one boot): its calls all
  ended before this boot began, so they count as ended at monotonic 0 (the boot); a file of an
  earlier boot whose readings are all behind the clock is kept as it is, which holds its calls
  later than they were: safe either way, and never a wait for times of another boot.

A budget folder on a memory file system (``HARVESTER_BUDGET_DIR`` under ``/run``) loses its
marks at a reboot: a budget there starts empty after one, even if calls were made in the
window before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from harvester.errors import BudgetUnavailable
from harvester.layout import BUDGET_KNOWN_SUFFIX
from harvester.pacing.protocol import BUDGET_DIR_ENV, Admission, Clock

__all__ = ["FileStore"]

log = logging.getLogger("harvester")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ends (c INTEGER PRIMARY KEY, t REAL NOT NULL, n INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ends_t ON ends (t);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    expires REAL NOT NULL,
    n INTEGER NOT NULL DEFAULT 1,
    lost INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA_VERSION = "2"  # files of another version hold history this one cannot read
# The k-th most recent call: the first row whose calls reach back to rank k, if any row does.
_NTH_SQL = (
    "SELECT e.t, e.c - e.n <= m.top - ? FROM ends e, (SELECT max(c) AS top FROM ends) m"
    " WHERE e.c >= m.top - ? + 1 ORDER BY e.c LIMIT 1"
)
_LAST_SQL = "SELECT c, t FROM ends ORDER BY c DESC LIMIT 1"
_LEASES_SQL = (
    "SELECT coalesce(sum(n), 0), coalesce(sum(1 - lost), 0), min(expires),"
    " (SELECT value FROM meta WHERE name = 'pause') FROM leases"
)
BUSY_TIMEOUT_SECONDS = 5.0  # every transaction is a few statements: a wait this long is a fault
LOCK_RETRY_SECONDS = 0.0005
CLEANUP_EVERY = 32  # ends between two sweeps of what no window can hold any more

Ident = tuple[int, int] | None


def _busy(exc: sqlite3.OperationalError) -> bool:
    """True when another process holds the file's write lock."""
    return "locked" in str(exc) or "busy" in str(exc)


def _boot_id() -> str:
    """The kernel's boot id where it can be read (Linux); empty elsewhere."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _ident(path: Path) -> Ident:
    """The file's device and inode, or None when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class FileStore:
    """A key's budget in a SQLite file shared by the processes of one host.

    Each operation is one short ``BEGIN IMMEDIATE`` transaction: the file's lock makes
    check-and-lease atomic across processes. Synchronous on purpose: a transaction takes well
    under a millisecond, less than handing it to a thread. See the module docstring for what
    the file holds and when its history is not trusted.
    """

    def __init__(
        self,
        path: Path,
        windows: Sequence[tuple[int, float]],
        *,
        lease_seconds: float,
        clock: Clock = time.monotonic,
        boot_id: Callable[[], str] = _boot_id,
    ) -> None:
        self.path = path
        self._known = path.with_suffix(BUDGET_KNOWN_SUFFIX)
        self._windows = list(windows)
        self._longest = max(seconds for _, seconds in self._windows)
        self._most = max(calls for calls, _ in self._windows)
        self._fewest = min(calls for calls, _ in self._windows)
        self._lease = lease_seconds
        self._clock = clock
        self._boot = boot_id()
        self._ends = 0
        self._mine: deque[float] = deque(maxlen=self._most)  # this process's last ends
        self._leases: dict[str, tuple[int, float]] = {}  # ours: id -> (row, expires)
        self._next_lease = 0
        self._ident: Ident = None
        try:
            self._db = self._open(rejoin=False)
        except (OSError, sqlite3.Error) as exc:
            raise BudgetUnavailable(
                f"the rate budget file {path} cannot be used: {exc} "
                f"({BUDGET_DIR_ENV} may name another folder)",
                before_any_call=True,
            ) from exc

    # --- the file, and its history -------------------------------------------------------

    def _open(self, *, rejoin: bool) -> sqlite3.Connection:
        """Connect (creating the file if need be) and vouch for its history; blocking."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lost = rejoin or self._known.exists()  # a budget was here: a new file lost its calls
        # The mark is also the lock under which a file is created: a deleted file's write-ahead
        # log and index, still in use by the processes that had it open, must not be taken
        # over by the new file (SQLite would replay the old log into it).
        with open(self._known, "a", encoding="utf-8") as mark:
            fcntl.flock(mark, fcntl.LOCK_EX)
            if not self.path.exists():
                for stale in ("-wal", "-shm"):
                    Path(f"{self.path}{stale}").unlink(missing_ok=True)
            db = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA synchronous=OFF")  # a budget lost to a power cut is rebuilt
                self._set_up(db, lost)
            except BaseException:
                db.close()
                raise
            self._ident = _ident(self.path)
        return db

    def _set_up(self, db: sqlite3.Connection, lost: bool) -> None:
        """WAL, the tables, the history check; before any call, so a busy file may block."""
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._vouch(db, self._clock(), lost)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(LOCK_RETRY_SECONDS)

    def _vouch(self, db: sqlite3.Connection, now: float, lost: bool) -> None:
        """Start a new file's history, or check an existing one's, as the module says."""
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if meta.get("schema") == SCHEMA_VERSION:
            boot = meta.get("boot", "")
            other_boot = (bool(boot and self._boot) and boot != self._boot) or float(
                meta.get("seen", "-inf")
            ) > now
            if not other_boot:
                return
            (calls,) = db.execute(
                "SELECT (SELECT coalesce(sum(n), 0) FROM ends)"
                " + (SELECT coalesce(sum(n), 0) FROM leases)"
            ).fetchone()
            self._wipe(db)
            self._after_boot(db, now, int(calls))
        else:
            self._wipe(db)
            if lost or meta:  # a budget was here, or a file this version cannot read
                self._spent(db, now)
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("schema", SCHEMA_VERSION), ("boot", self._boot), ("seen", repr(now))],
        )

    @staticmethod
    def _wipe(db: sqlite3.Connection) -> None:
        for table in ("ends", "leases", "meta"):
            db.execute(f"DELETE FROM {table}")  # fixed names

    def _spent(self, db: sqlite3.Connection, now: float) -> None:
        """History lost now: the window before spent in full, the fewest calls in flight."""
        self._add_end(db, now, self._most)
        db.execute(
            "INSERT INTO leases (expires, n, lost) VALUES (?, ?, 1)",
            (now + self._lease, self._fewest),
        )

    def _after_boot(self, db: sqlite3.Connection, now: float, calls: int) -> None:
        """The ``calls`` of an earlier boot (its ends and leases) ended before this one began,
        at monotonic 0; their own times, on that boot's clock, mean nothing now."""
        if calls and now < self._longest:
            self._add_end(db, 0.0, min(calls, self._most))

    def _rejoin(self) -> None:
        """The file was deleted or replaced: join the one there now (or create it), bringing
        this process's calls still in a window and its live leases."""
        log.warning(
            "the rate budget file %s was deleted or replaced; joining the new one", self.path
        )
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        try:
            self._db = self._open(rejoin=True)
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            now = self._clock()
            for ended in self._mine:
                if ended > now - self._longest:
                    self._add_end(db, ended, 1)
            for lease, (_, expires) in list(self._leases.items()):
                row = db.execute("INSERT INTO leases (expires) VALUES (?)", (expires,)).lastrowid
                self._leases[lease] = (int(row or 0), expires)
            db.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            raise BudgetUnavailable(f"the rate budget file {self.path} failed: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[tuple[sqlite3.Connection, float]]:
        """One atomic read-modify-write and the clock read inside the lock; sqlite errors
        become BudgetUnavailable. A file deleted or replaced since the last one is re-joined.

        The file's lock is taken without SQLite's busy handler, which sleeps in the event loop:
        a busy file is retried after a short asynchronous sleep instead.
        """
        if _ident(self.path) != self._ident:
            self._rejoin()
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
                now = self._clock()
                db.execute("UPDATE meta SET value = ? WHERE name = 'seen'", (repr(now),))
                yield db, now
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BudgetUnavailable(f"the rate budget file {self.path} failed: {exc}") from exc

    # --- the rule ------------------------------------------------------------------------

    @staticmethod
    def _add_end(db: sqlite3.Connection, at: float, n: int) -> None:
        """Record ``n`` calls ended at ``at``, or at the last end if that is later: the order
        keeps the lookups exact, and later is always safe."""
        last = db.execute(_LAST_SQL).fetchone()
        top, latest = (int(last[0]), float(last[1])) if last else (0, -math.inf)
        db.execute("INSERT INTO ends VALUES (?, ?, ?)", (top + n, max(at, latest), n))

    @staticmethod
    def _nth(db: sqlite3.Connection, k: int) -> float | None:
        """When the ``k``-th most recent call ended (None: fewer calls are recorded)."""
        row = db.execute(_NTH_SQL, (k, k)).fetchone()
        return float(row[0]) if row is not None and row[1] else None

    def _lapse(self, db: sqlite3.Connection, now: float) -> None:
        """Leases past their time: their calls count as ended when the lease lapsed."""
        lapsed = db.execute(
            "SELECT expires, n FROM leases WHERE expires <= ? ORDER BY expires", (now,)
        ).fetchall()
        for expires, n in lapsed:
            self._add_end(db, float(expires), int(n))
        if lapsed:
            db.execute("DELETE FROM leases WHERE expires <= ?", (now,))

    async def reserve(self) -> Admission:
        """Lease a place if a call fits every window now; else how long until it may.

        A wait is exact when no live call holds a window full: a call that ends then keeps
        its place for a window, so only time makes room. When live calls fill one, only their
        ends make room: poll, unless every such call is one a lost history is assumed to hold
        (they lapse at a known time).
        """
        async with self._transaction() as (db, now):
            self._lapse(db, now)
            live, ours, first_lapse, paused = db.execute(_LEASES_SQL).fetchone()
            ready = max(now, float(paused)) if paused is not None else now
            full = False
            for calls, seconds in self._windows:
                need = calls - int(live)
                if need <= 0:
                    full = True
                    continue
                nth = self._nth(db, need)
                if nth is not None:
                    ready = max(ready, nth + seconds)
            if full:
                return (max(ready, float(first_lapse)) - now, int(ours) == 0)
            if ready > now:
                return (ready - now, True)
            expires = now + self._lease
            row = db.execute("INSERT INTO leases (expires) VALUES (?)", (expires,)).lastrowid
            self._next_lease += 1
            lease = str(self._next_lease)
            self._leases[lease] = (int(row or 0), expires)
            return lease

    async def end(self, lease: str, grace: float = 0.0) -> None:
        """The call's attempt is over: it counts from now (plus ``grace``); its lease goes,
        whether or not it had lapsed (a lapsed one was counted too: later, never earlier).
        Every so often, forget the ends past the longest window."""
        row, _ = self._leases.pop(lease, (0, 0.0))
        self._ends += 1
        async with self._transaction() as (db, now):
            db.execute("DELETE FROM leases WHERE id = ?", (row,))
            self._add_end(db, now + grace, 1)
            self._mine.append(now + grace)
            if self._ends % CLEANUP_EVERY == 0:
                db.execute("DELETE FROM ends WHERE t <= ?", (now - self._longest,))

    async def free(self, lease: str) -> None:
        """The call was never sent: drop its lease."""
        row, _ = self._leases.pop(lease, (0, 0.0))
        async with self._transaction() as (db, _now):
            db.execute("DELETE FROM leases WHERE id = ?", (row,))

    async def pause(self, seconds: float) -> None:
        """Extend the key's pause to ``seconds`` from now."""
        async with self._transaction() as (db, now):
            db.execute(
                "INSERT INTO meta VALUES ('pause', ?) ON CONFLICT (name) DO UPDATE"
                " SET value = max(CAST(value AS REAL), excluded.value)",
                (now + seconds,),
            )

    async def close(self) -> None:
        """Close the file."""
        self._db.close()
