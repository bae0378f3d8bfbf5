"""The lake's objects, each written over the version it replaces, or not at all.

Every object the harvester writes into an output (partition files, the output record, the
discovered list, run reports; Delta commits have their own protocol) goes through
:class:`Objects`. ``get`` returns the bytes with their :class:`Version`; ``put(…, expect=v)``
replaces the object only while it is still version ``v``, and ``expect=NEW`` creates it only
while there is none. When another writer got there first the write is refused and ``put``
raises :class:`~harvester.errors.WriteConflict` (exit 4) naming the object, so a writer that
lost the race, or its lock, cannot overwrite what another wrote. ``guard`` (the lock's lease
check) is called right before every write request.

- :class:`StoreObjects`: an object store through obstore: ``If-None-Match: *`` for a new key,
  ``If-Match: ETag`` (GCS: the generation) for a replacement. A conditional write is always one
  PUT (obstore never uses multipart for it), so the guard runs right before the one request.
- :class:`LocalObjects`: a folder: a hidden temp file beside the target, fsynced; then the file
  there is checked to be still the one read (device, inode, size, mtime) and the temp renamed
  over it. The output's flock makes check-and-rename one step for every harvester run.
- :class:`ArrowObjects`: ``gs://`` and ``abfs://`` through pyarrow, which has no conditional
  writes: ``fenced`` is False and the run warns that other hosts are not kept out.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from harvester.errors import StorageError, UsageError, WriteConflict
from harvester.job.location import Location, storage_env
from harvester.model import Fingerprint
from harvester.redact import redact

__all__ = [
    "NEW",
    "ArrowObjects",
    "LocalObjects",
    "Objects",
    "StoreObjects",
    "Version",
    "open_objects",
    "s3_store",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Bounded so that a failing store surfaces in seconds, well inside a lock lease.
_RETRY = {
    "max_retries": 4,
    "retry_timeout": timedelta(seconds=20),
    "backoff": {
        "init_backoff": timedelta(milliseconds=100),
        "max_backoff": timedelta(seconds=5),
        "base": 2,
    },
}


class Version(NamedTuple):
    """Which version of an object a write replaces: its ETag, and (S3, GCS) its version id."""

    etag: str | None = None
    generation: str | None = None

    def describe(self) -> str:
        """``no object`` for :data:`NEW`, else the version, for messages."""
        if self == NEW:
            return "no object"
        return f"version {self.etag or self.generation}"


NEW = Version()  # expect=NEW: the key must not exist yet


class Objects(ABC):
    """Whole objects of one output, read with their version, written only over it."""

    fenced = True  # whether the store refuses a write whose condition does not hold
    deletes = True  # whether an object can be deleted only if it is still the version read

    def __init__(self, guard: Callable[[], None] | None = None) -> None:
        self.guard: Callable[[], None] = guard or (lambda: None)

    @abstractmethod
    def uri(self, path: str) -> str:
        """The object's name for messages (``s3://bucket/key``, or the local path)."""

    @abstractmethod
    def get(self, path: str) -> tuple[bytes, Version] | None:
        """The object's bytes and version; None when there is no such object."""

    def put(self, path: str, data: bytes, *, expect: Version) -> Version:
        """Write ``data`` over version ``expect`` (NEW: only if absent); return the new version.

        WriteConflict when the object is no longer ``expect``; StorageError when the store fails.
        """
        self.guard()
        return self._put(path, data, expect)

    def delete(self, path: str, *, expect: Version) -> None:
        """Delete the object if it is still version ``expect`` (only where ``deletes``)."""
        self.guard()
        self._delete(path, expect)

    @abstractmethod
    def fingerprint(self, path: str, version: Version) -> Fingerprint | None:
        """What a listing shows of the object (size, mtime) while it is still ``version``."""

    @abstractmethod
    def _put(self, path: str, data: bytes, expect: Version) -> Version: ...

    def _delete(self, path: str, expect: Version) -> None:
        raise NotImplementedError(f"{self.uri(path)}: this store cannot delete conditionally")


# --- object stores, through obstore ---------------------------------------------------------


class StoreObjects(Objects):
    """An object store (obstore): every write a single conditional PUT."""

    deletes = False  # obstore's delete takes no condition: an emptied partition keeps a file

    def __init__(
        self, location: Location, store: Any, guard: Callable[[], None] | None = None
    ) -> None:
        super().__init__(guard)
        self.location = location
        self.store = store

    def uri(self, path: str) -> str:
        """``scheme://bucket/key``."""
        return f"{self.location.scheme}://{path}"

    def _key(self, path: str) -> str:
        bucket = self.location.bucket + "/"
        if not path.startswith(bucket):
            raise ValueError(f"{path!r} is not in bucket {self.location.bucket!r}")
        return path[len(bucket) :]

    def get(self, path: str) -> tuple[bytes, Version] | None:
        """One GET: the bytes and the version the store holds them as."""
        import obstore

        try:
            got = obstore.get(self.store, self._key(path))
            data = bytes(got.bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._failed("read", path, exc) from None
        return data, Version(got.meta.get("e_tag"), got.meta.get("version"))

    def head(self, path: str) -> dict[str, Any] | None:
        """The object's metadata (size, last_modified, e_tag), None when absent."""
        import obstore

        try:
            meta: dict[str, Any] = dict(obstore.head(self.store, self._key(path)))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._failed("read", path, exc) from None
        return meta

    def _put(self, path: str, data: bytes, expect: Version) -> Version:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        mode: Any = "create"
        if expect != NEW:  # S3 and Azure compare the ETag, GCS the generation: send both
            mode = {k: v for k, v in (("e_tag", expect.etag), ("version", expect.generation)) if v}
        try:
            put = obstore.put(self.store, self._key(path), data, mode=mode)
        except (AlreadyExistsError, PreconditionError) as exc:
            raise WriteConflict(self.uri(path), expect.describe(), _said(exc)) from None
        except Exception as exc:
            raise self._failed("write", path, exc) from None
        return Version(put.get("e_tag"), put.get("version"))

    def delete_scratch(self, path: str) -> None:
        """Delete an object of our own making, unconditionally (the probe's scratch object)."""
        import obstore

        try:
            obstore.delete(self.store, self._key(path))
        except Exception as exc:
            raise self._failed("delete", path, exc) from None

    def fingerprint(self, path: str, version: Version) -> Fingerprint | None:
        """One HEAD: size and mtime as a listing shows them, None if already replaced."""
        meta = self.head(path)
        if meta is None or meta.get("e_tag") != version.etag:
            return None  # another writer's object now: what the state records must not be ours
        modified: datetime = meta["last_modified"]
        mtime_ns = (modified - _EPOCH) // timedelta(microseconds=1) * 1000
        return Fingerprint(int(meta["size"]), mtime_ns)

    def ignored_conditions(self, scratch: str) -> str | None:
        """What the store ignores of conditional writes, tried on a scratch object; None if
        it honours both (a second create refused, an update over a stale version refused)."""
        path = f"{scratch}/{uuid.uuid4().hex}"
        try:
            first = self._put(path, b"1", NEW)
            try:
                self._put(path, b"2", NEW)
                return "a second create-if-absent (If-None-Match: *) was accepted"
            except WriteConflict:
                pass
            self._put(path, b"3", first)
            try:
                self._put(path, b"4", first)
                return "an update over a stale version (If-Match) was accepted"
            except WriteConflict:
                return None
        finally:
            with contextlib.suppress(StorageError):  # a leftover scratch object harms nobody
                self.delete_scratch(path)

    def _failed(self, what: str, path: str, exc: Exception) -> StorageError:
        return StorageError(
            f"{self.uri(path)}: the object store failed a {what}: {_said(exc)}", uri=self.uri(path)
        )


def _said(exc: BaseException) -> str:
    """The store's own words, one line (obstore appends a long debug dump), redacted."""
    text = str(exc).split("\n\nDebug source:", 1)[0].strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return redact(first[:400])


def s3_store(location: Location, env: dict[str, str] | None = None) -> Any:
    """An obstore S3Store for ``location``: endpoint and region as everything else uses them.

    Credentials: the standard ``AWS_*`` variables (obstore reads them, and web identity, ECS
    and instance roles); without a key in the environment, boto3's chain when boto3 is
    installed (profiles, ``~/.aws/credentials``, SSO), as the AWS tools find them.
    """
    try:
        from obstore.store import S3Store
    except ImportError:
        raise UsageError(
            "writing to s3:// needs the s3 extra (pip install 'harvester[s3]'): its conditional"
            " writes and its lock"
        ) from None
    env = dict(os.environ) if env is None else env
    found = storage_env(location, env)
    config: dict[str, Any] = {}
    if "endpoint" in found:
        config["endpoint"] = found["endpoint"]
    if "region" in found:
        config["region"] = found["region"]
    client = {
        "allow_http": found.get("endpoint", "").startswith("http://"),
        "timeout": "30s",
        "connect_timeout": "5s",
    }
    return S3Store(
        location.bucket,
        config=config,  # type: ignore[arg-type]
        client_options=client,  # type: ignore[arg-type]
        retry_config=_RETRY,  # type: ignore[arg-type]
        credential_provider=_boto3_credentials(env),
    )


def _boto3_credentials(env: dict[str, str]) -> Any:
    """boto3's credential chain, when no key is in the environment and boto3 is installed."""
    if env.get("AWS_ACCESS_KEY_ID"):
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    return Boto3CredentialProvider(boto3.Session(profile_name=env.get("AWS_PROFILE") or None))


# --- a local folder -------------------------------------------------------------------------


class LocalObjects(Objects):
    """A local folder: temp file, fsync, check the target is still the one read, rename."""

    def uri(self, path: str) -> str:
        """The path itself."""
        return path

    def get(self, path: str) -> tuple[bytes, Version] | None:
        """The file's bytes, and its identity as its version."""
        try:
            with open(path, "rb") as fh:
                return fh.read(), _file_version(os.fstat(fh.fileno()))
        except FileNotFoundError:
            return None

    def _put(self, path: str, data: bytes, expect: Version) -> Version:
        target = Path(path)
        make_dirs(target.parent)
        temp = target.with_name(f".{target.name}.tmp")  # hidden, and never *.parquet
        try:
            _write_durably(temp, data)
            self._check(target, expect)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)
        return _file_version(os.stat(target))

    def _delete(self, path: str, expect: Version) -> None:
        self._check(Path(path), expect)
        os.unlink(path)
        fsync_dir(Path(path).parent)

    def _check(self, target: Path, expect: Version) -> None:
        """WriteConflict unless the file there is still the one read (or still absent)."""
        try:
            found = _file_version(os.stat(target))
        except FileNotFoundError:
            found = NEW
        if found != expect:
            raise WriteConflict(str(target), expect.describe(), f"found {found.describe()}")

    def fingerprint(self, path: str, version: Version) -> Fingerprint | None:
        """Size and mtime, as a listing shows them, None if already replaced."""
        stat = os.stat(path)
        if _file_version(stat) != version:
            return None
        return Fingerprint(stat.st_size, stat.st_mtime_ns)


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _file_version(stat: os.stat_result) -> Version:
    """A rename makes a new inode: with size and mtime, the identity of one file's content."""
    return Version(f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path) -> None:
    """Create ``folder`` and missing parents, each new entry made durable in its parent."""
    if folder.is_dir():
        return
    make_dirs(folder.parent)
    folder.mkdir(exist_ok=True)
    fsync_dir(folder.parent)


# --- stores without conditional writes (pyarrow) --------------------------------------------


class ArrowObjects(Objects):
    """``gs://`` and ``abfs://`` through pyarrow: writes are not conditional (not fenced)."""

    fenced = False

    def __init__(
        self, location: Location, fs: Any, guard: Callable[[], None] | None = None
    ) -> None:
        super().__init__(guard)
        self.location = location
        self.fs = fs

    def uri(self, path: str) -> str:
        """``scheme://bucket/key``."""
        return f"{self.location.scheme}://{path}"

    def get(self, path: str) -> tuple[bytes, Version] | None:
        """The object's bytes; its size and mtime stand for a version."""
        try:
            with self.fs.open_input_stream(path) as fh:
                data = bytes(fh.read())
            info = self.fs.get_file_info(path)
        except FileNotFoundError:
            return None
        return data, Version(f"{info.size}:{info.mtime_ns}")

    def _put(self, path: str, data: bytes, expect: Version) -> Version:
        out = self.fs.open_output_stream(path)
        out.write(data)
        out.close()  # the upload completes here: before, the key still holds the old object
        info = self.fs.get_file_info(path)
        return Version(f"{info.size}:{info.mtime_ns}")

    def _delete(self, path: str, expect: Version) -> None:
        self.fs.delete_file(path)

    def fingerprint(self, path: str, version: Version) -> Fingerprint | None:
        """Size and mtime."""
        info = self.fs.get_file_info(path)
        return Fingerprint(int(info.size), int(info.mtime_ns or 0))


def open_objects(location: Location, guard: Callable[[], None] | None = None) -> Objects:
    """The objects of ``location``: a folder, an S3 bucket (fenced), or gs/abfs (not yet)."""
    if location.is_local:
        return LocalObjects(guard)
    if location.scheme == "s3":
        return StoreObjects(location, s3_store(location), guard)
    return ArrowObjects(location, location.filesystem(), guard)
