"""One writer per lake across hosts: a lease held in the object store itself.

The lock is one small JSON object, ``PREFIX/_harvester/lock.json``, naming its holder (host,
process, a random token) and when its lease ends. Every change is a conditional write, so two
runs can never both believe they hold it:

- **take**: create the object only if there is none (``If-None-Match: *``);
- **take over**: replace it only if it is still the very version read (``If-Match: ETag``), and
  only when it was released, its lease has ended (another host: 60 s after the holder's last
  renewal), or its holder is a process of this host that is no longer alive (a kill -9: taken at
  once, as the local lock is);
- **renew**: every 20 s, the holder rewrites it with ``If-Match`` on its own last version; a
  renewal refused means another run took the lock over: the holder says so, and
  :meth:`ObjectLock.check` (which the sink calls before every write) stops it with exit 4;
- **release**: a last conditional write marking it released. The object is never deleted
  (delete-then-create would let two runs in).

Hosts compare lease ends with their own clocks: keep them in step (NTP); the lease is far
longer than any skew worth the name. ``pyarrow.fs`` has no conditional writes, so this module
uses boto3 (the ``s3`` extra).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from harvester.errors import LockedError, StorageError, UsageError
from harvester.job.location import Location, storage_env
from harvester.lake.lock import OutputLock
from harvester.layout import LOCK_KEY
from harvester.redact import redact

__all__ = ["LEASE_SECONDS", "ObjectLock", "output_lock"]

log = logging.getLogger("harvester.lock")

LEASE_SECONDS = 60.0
RENEW_SECONDS = 20.0
POLL_SECONDS = 2.0
_REFUSED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def s3_client(location: Location) -> Any:
    """A boto3 S3 client with the location's endpoint and region (credentials: boto3's own)."""
    try:
        import boto3
    except ImportError:
        raise UsageError(
            "writing to s3:// needs the s3 extra (pip install 'harvester[s3]') for its lock"
        ) from None
    options = storage_env(location)
    return boto3.client(
        "s3", endpoint_url=options.get("endpoint"), region_name=options.get("region")
    )


class ObjectLock:
    """A lease on an object-store output, taken and renewed by conditional writes."""

    def __init__(
        self,
        location: Location,
        *,
        lease_seconds: float = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        client: Any = None,
    ) -> None:
        self.location = location
        self.key = "/".join(p for p in (location.prefix, LOCK_KEY) if p)
        self.lease = lease_seconds
        self.renew_every = renew_seconds
        self._now = now
        self._client = client
        self._etag: str | None = None
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = False  # a renewal was refused: another run took the lock over

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.location)
        return self._client

    def acquire(self, *, wait: bool = False) -> None:
        """Take the lock; LockedError (exit 4) while another live run holds it, unless ``wait``."""
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
        self._renewer = threading.Thread(target=self._renew_loop, name="lock-lease", daemon=True)
        self._renewer.start()

    def check(self) -> None:
        """Raise LockedError (exit 4) once the lock was taken over: no more writes."""
        if self.lost:
            raise LockedError(
                f"{self.location}: another run took the lock over (this run's lease had ended);"
                " this run stops before writing again; what it fetched is kept in its state"
            )

    def release(self) -> None:
        """Stop renewing and mark the lock released (a conditional write on our version)."""
        if self._etag is None:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self._put(self._body(released=True), if_match=self._etag)
        except _Refused:
            pass  # taken over meanwhile: it is not ours to release
        finally:
            self._etag = None

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

    def _try_take(self) -> str | None:
        """One attempt: None when the lock is now ours, else who holds it."""
        try:
            self._etag = self._put(self._body(), if_none_match=True)
            return None
        except _Refused:
            pass
        current, etag = self._get()
        if current is None:
            return "a holder that just let go"  # deleted meanwhile: the next attempt creates it
        if not self._may_take_over(current):
            return _describe(current)
        try:
            self._etag = self._put(self._body(), if_match=etag)
        except _Refused:
            return "another run taking it at the same moment"
        log.warning("%s: took the lock over from %s", self.location, _describe(current))
        return None

    def _may_take_over(self, current: dict[str, Any]) -> bool:
        """Released, expired, or held by a dead process of this host."""
        if current.get("released"):
            return True
        try:
            expires = datetime.fromisoformat(str(current["expires_at"]))
        except (KeyError, ValueError):
            return True  # not a lock we can read: nobody can renew it either
        if self._now() >= expires:
            return True
        if current.get("host") == socket.gethostname():
            return not _alive(int(current.get("pid", 0)))
        return False

    def _renew_loop(self) -> None:
        """Renew the lease until released; a refused renewal means the lock was lost."""
        while not self._stop.wait(self.renew_every):
            try:
                assert self._etag is not None
                self._etag = self._put(self._body(), if_match=self._etag)
            except _Refused:
                self.lost = True
                log.error(
                    "%s: the lock was taken over by another run (its lease had ended?):"
                    " two runs may now write the same lake",
                    self.location,
                )
                return
            except StorageError as exc:  # a blip: the lease outlives a few missed renewals
                log.warning("%s: could not renew the lock: %s", self.location, exc)

    def _body(self, *, released: bool = False) -> bytes:
        now = self._now()
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self._token,
                "renewed_at": now.isoformat(timespec="seconds"),
                "expires_at": (now + timedelta(seconds=self.lease)).isoformat(),
                "released": released,
            }
        ).encode()

    def _put(self, body: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """A conditional PUT; return the new ETag; _Refused when the condition failed."""
        conditions: dict[str, str] = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        try:
            answer = self.client.put_object(
                Bucket=self.location.bucket, Key=self.key, Body=body, **conditions
            )
        except Exception as exc:
            _raise_translated(exc, self.location)
        return str(answer["ETag"])

    def _get(self) -> tuple[dict[str, Any] | None, str]:
        """The lock's body and ETag (None when there is no lock object)."""
        try:
            answer = self.client.get_object(Bucket=self.location.bucket, Key=self.key)
            body = answer["Body"].read()
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None, ""
            _raise_translated(exc, self.location)
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        return (data if isinstance(data, dict) else {}), str(answer["ETag"])


class _Refused(Exception):
    """A conditional write's condition did not hold."""


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _raise_translated(exc: Exception, location: Location) -> Any:
    """Our error for a boto3 one: _Refused for a failed condition, else StorageError."""
    if _code(exc) in _REFUSED:
        raise _Refused from None
    raise StorageError(f"{location}: the lock could not be read or written: {redact(str(exc))}")


def _alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(current: dict[str, Any]) -> str:
    return (
        f"host {current.get('host', '?')}, pid {current.get('pid', '?')},"
        f" lease until {current.get('expires_at', '?')}"
    )


def output_lock(location: Location, state_dir: Path | None = None) -> OutputLock | ObjectLock:
    """The lock that keeps one writer on ``location``: a flock locally, a lease in a bucket.

    ``gs://`` and ``abfs://`` have no lease here yet: a flock beside the state keeps one writer
    per state on this host, and the run says that other hosts are not kept out.
    """
    if location.is_local:
        return OutputLock(location.path)
    if location.scheme == "s3":
        return ObjectLock(location)
    log.warning(
        "%s: no lock in the object store for %s:// outputs: one writer per lake is kept on this"
        " host only; do not run the same job from two hosts at once",
        location,
        location.scheme,
    )
    return OutputLock(state_dir if state_dir is not None else Path.cwd())
