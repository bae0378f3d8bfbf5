"""One writer per lake across hosts: a lease held in the object store itself.

The lock is one small JSON object, ``PREFIX/_harvester/lock.json``, naming its holder (host,
process, boot id, PID namespace, process start, a random token) and when its lease ends. Every
change is a conditional write, so two runs can never both believe they hold it:

- **probe**: the first acquire checks, on a scratch object, that the store refuses a second
  create-if-absent and an update over a stale version; a store that ignores them is refused
  (:class:`~harvester.errors.UnfencedStore`, exit 2) unless the risk is accepted
  (``--allow-unfenced``, ``storage: {allow_unfenced: true}``);
- **take**: create the object only if there is none (``If-None-Match: *``);
- **take over**: replace it only if it is still the very version read (``If-Match``), and only
  when it was released, its lease has ended, or its holder is certainly dead
  (:meth:`Holder.is_dead`: same machine, same PID namespace, its process gone);
- **renew**: every ``lease / 3``, ``If-Match`` on the holder's own last version;
- **a refused write is read back**: when the lock holds our token, the write had landed and
  only its answer was lost (an SDK retry then meets its own write): the lock is adopted;
- **release**: a last conditional write marking it released; the object is never deleted
  (delete-then-create would let two runs in). A refused release is logged, never raised.

The holder keeps a deadline on its own monotonic clock: the start of its last confirmed write
plus the lease minus a margin. :meth:`ObjectLock.check`, called right before every write to
the lake, refuses once the deadline has passed (a process stopped or frozen past its lease), or
once a renewal was refused (another run took over: exit 4) or failed (exit 74); the run stops
writing at once. Hosts compare lease ends with their own clocks: keep them in step (NTP).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from harvester.errors import (
    HarvesterError,
    LeaseLost,
    LockedError,
    StorageError,
    UnfencedStore,
    WriteConflict,
)
from harvester.job.location import Location
from harvester.lake.holder import Holder
from harvester.lake.lock import OutputLock
from harvester.lake.objects import NEW, StoreObjects, Version, s3_store
from harvester.layout import LOCK_KEY, PROBE_DIR

__all__ = ["LEASE_ENV", "LEASE_SECONDS", "UNFENCED_FLAG", "ObjectLock", "output_lock"]

log = logging.getLogger("harvester.lock")

LEASE_SECONDS = 60.0
LEASE_ENV = "HARVESTER_LOCK_LEASE_SECONDS"  # a shorter lease (tests), or a longer one
MARGIN = 1 / 6  # of the lease: stop writing this long before others may take over
POLL_SECONDS = 2.0
UNFENCED_FLAG = "--allow-unfenced (or storage: {allow_unfenced: true} in the job)"


def _lease_from_env() -> float:
    try:
        value = float(os.environ.get(LEASE_ENV, ""))
    except ValueError:
        return LEASE_SECONDS
    return value if value > 0 else LEASE_SECONDS


class ObjectLock:
    """A lease on an object-store output, taken and renewed by conditional writes."""

    def __init__(
        self,
        location: Location,
        *,
        lease_seconds: float | None = None,
        renew_seconds: float | None = None,
        allow_unfenced: bool = False,
        objects: StoreObjects | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.location = location
        self.path = location.join(LOCK_KEY)
        self.lease = lease_seconds or _lease_from_env()
        self.renew_every = renew_seconds or self.lease / 3
        self.allow_unfenced = allow_unfenced
        self._objects = objects
        self._now, self._monotonic = now, monotonic
        self._token = uuid.uuid4().hex
        self._mutex = threading.Lock()  # the renewal thread and the writer share what follows
        self._held: Version | None = None
        self._deadline = float("-inf")
        self._since: float | None = None  # start of the oldest write not yet confirmed
        self._failure: HarvesterError | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._probed = False
        self.on_lost: Callable[[], None] | None = None  # called (renewal thread) on a loss

    @property
    def objects(self) -> StoreObjects:
        """The lock's own view of the store (unguarded: the lock checks itself)."""
        if self._objects is None:
            self._objects = StoreObjects(self.location, s3_store(self.location))
        return self._objects

    @property
    def lost(self) -> bool:
        """Whether a renewal was refused or failed: this run may write no more."""
        return self._failure is not None

    def acquire(self, *, wait: bool = False) -> None:
        """Take the lock; LockedError (exit 4) while another live run holds it, unless ``wait``."""
        self._probe()
        while True:
            holder = self._try_take()
            if holder is None:
                break
            if not wait:
                raise LockedError(
                    f"{self.location} is being written by another harvester run ({holder});"
                    " this run exits 4; wait for it to finish, or use --wait to wait"
                )
            time.sleep(POLL_SECONDS)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="lock-lease", daemon=True)
        self._renewer.start()

    def check(self) -> None:
        """Raise unless this run may write now: its lease is live by its own clock and no
        renewal was refused (LeaseLost, exit 4) or failed (StorageError, exit 74)."""
        with self._mutex:
            if self._failure is not None:
                raise self._failure
            now, deadline = self._monotonic(), self._deadline
        if now >= deadline:
            renewed = now - (deadline - self.lease * (1 - MARGIN))
            raise LeaseLost(
                str(self.location),
                f"this run's lock was last renewed {renewed:.1f} s ago by its own clock, past"
                f" its {self.lease:g} s lease less a {self.lease * MARGIN:g} s margin (was the"
                " process paused or stopped?): another run may have taken it over",
            )

    def release(self) -> None:
        """Stop renewing and mark the lock released; never raises (a refusal is logged)."""
        if self._held is None:
            return
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
        try:
            self._put(self._body(released=True), self._held)
        except WriteConflict:
            log.info("%s: the lock is no longer this run's: left as it is", self.location)
        except StorageError as exc:
            log.warning(
                "%s: could not mark the lock released (%s); the next run takes it over once"
                " its lease has ended (%.0f s)",
                self.location,
                exc,
                self.lease,
            )
        finally:
            self._held = None

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

    # --- the protocol --------------------------------------------------------------------------

    def _probe(self) -> None:
        """Refuse a store that ignores conditional writes (once per lock), unless allowed."""
        if self._probed:
            return
        ignored = self.objects.ignored_conditions(self.location.join(PROBE_DIR))
        self._probed = True
        if ignored is None:
            return
        if not self.allow_unfenced:
            raise UnfencedStore(str(self.location), ignored, UNFENCED_FLAG)
        log.warning(
            "%s: the object store ignores conditional writes (%s); running unfenced as allowed:"
            " two writers can overwrite each other's partitions unseen",
            self.location,
            ignored,
        )

    def _try_take(self) -> str | None:
        """One attempt: None when the lock is now ours, else who holds it."""
        try:
            self._put(self._body(), NEW)
            return None
        except WriteConflict:
            pass
        found = self._read()
        if found is None:
            self._since = None  # nothing of ours landed
            return "a holder that just let go"  # deleted meanwhile: the next attempt creates it
        if self._reclaimed(found):  # our create landed; only its answer was lost
            return None
        current, version = found
        if not self._may_take_over(current):
            return _describe(current)
        try:
            self._put(self._body(), version)
        except WriteConflict:
            return "another run taking it at the same moment"
        log.warning("%s: took the lock over from %s", self.location, _describe(current))
        return None

    def _may_take_over(self, current: dict[str, Any]) -> bool:
        """Released, expired, or held by a process certainly dead."""
        if current.get("released"):
            return True
        try:
            expires = datetime.fromisoformat(str(current["expires_at"]))
        except (KeyError, ValueError):
            return True  # not a lock we can read: nobody can renew it either
        if self._now() >= expires:
            return True
        return Holder.of(current).is_dead()

    def _renew_loop(self) -> None:
        """Renew until released; stop at the first renewal refused or failed."""
        while not self._stop.wait(self.renew_every):
            failure = self._renew()
            if failure is not None:
                with self._mutex:
                    self._failure = failure
                log.error("%s", failure)
                if self.on_lost is not None:
                    self.on_lost()
                return

    def _renew(self) -> HarvesterError | None:
        """One renewal; the reason to stop writing when it was refused or failed."""
        held = self._held
        if held is None:
            return None
        try:
            self._put(self._body(), held)
            return None
        except WriteConflict:
            pass
        except StorageError as exc:
            try:
                if self._reclaimed(self._read()):
                    return None
            except StorageError:
                pass
            return StorageError(
                f"{self.location}: the lock could not be renewed ({exc}); this run stops"
                " writing before its lease ends",
                uri=self.objects.uri(self.path),
            )
        found = self._read()
        if found is not None and self._reclaimed(found):
            return None
        who = _describe(found[0]) if found is not None else "nobody (the lock was deleted)"
        return LeaseLost(str(self.location), f"another run took the lock over ({who})")

    def _reclaimed(self, found: tuple[dict[str, Any], Version] | None) -> bool:
        """Whether the lock as read is a write of ours not yet confirmed: it landed though its
        answer was lost (an SDK retry then met its own write). Then it is adopted, its lease
        counted from the oldest write not confirmed; else none of those writes counts."""
        mine = found is not None and found[0].get("token") == self._token
        if not mine or found is None or found[0].get("released") or found[1] == self._held:
            with self._mutex:
                self._since = None
            return False
        self._confirm(found[1])
        log.info("%s: a write's answer was lost; the lock is this run's", self.location)
        return True

    def _put(self, body: bytes, expect: Version) -> None:
        """A conditional write of the lock; confirmed (the deadline moves) on success."""
        with self._mutex:
            if self._since is None:
                self._since = self._monotonic()
        self._confirm(self.objects.put(self.path, body, expect=expect))

    def _confirm(self, version: Version) -> None:
        """The lock is ours at ``version``: its lease counts from the oldest unconfirmed write."""
        with self._mutex:
            since = self._since if self._since is not None else self._monotonic()
            self._held, self._since = version, None
            self._deadline = since + self.lease * (1 - MARGIN)

    def _read(self) -> tuple[dict[str, Any], Version] | None:
        """The lock's body and version (None when there is no lock object)."""
        found = self.objects.get(self.path)
        if found is None:
            return None
        try:
            data = json.loads(found[0])
        except ValueError:
            data = {}
        return (data if isinstance(data, dict) else {}), found[1]

    def _body(self, *, released: bool = False) -> bytes:
        now = self._now()
        return json.dumps(
            {
                **Holder.here().fields(),
                "token": self._token,
                "renewed_at": now.isoformat(timespec="seconds"),
                "expires_at": (now + timedelta(seconds=self.lease)).isoformat(),
                "released": released,
            }
        ).encode()


def _describe(current: dict[str, Any]) -> str:
    return (
        f"host {current.get('host', '?')}, pid {current.get('pid', '?')},"
        f" lease until {current.get('expires_at', '?')}"
    )


def output_lock(
    location: Location, state_dir: Path | None = None, *, allow_unfenced: bool = False
) -> OutputLock | ObjectLock:
    """The lock that keeps one writer on ``location``: a flock locally, a lease in a bucket.

    ``gs://`` and ``abfs://`` have no lease here yet: a flock beside the state keeps one writer
    per state on this host, and the run says that other hosts are not kept out.
    """
    if location.is_local:
        return OutputLock(location.path)
    if location.scheme == "s3":
        return ObjectLock(location, allow_unfenced=allow_unfenced)
    log.warning(
        "%s: no lock in the object store for %s:// outputs: one writer per lake is kept on this"
        " host only; do not run the same job from two hosts at once",
        location,
        location.scheme,
    )
    return OutputLock(state_dir if state_dir is not None else Path.cwd())
