"""Where an output lives: a local folder or an object store prefix, and its filesystem.

A job's ``output`` is a :class:`Location`: ``/data/flip`` (or ``output``, ``~/flip``) is a local
folder; ``s3://bucket/prefix``, ``gs://bucket/prefix`` and ``abfs://container/prefix`` are
object stores, reached through pyarrow's filesystem layer. Credentials come the way each
store's own tools take them (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_PROFILE``); the endpoint of
an S3-compatible store comes from the job's ``storage:`` block or from ``AWS_ENDPOINT_URL_S3``
/ ``AWS_ENDPOINT_URL``, which pyarrow does not read itself, so they are passed on here.

A location never holds a secret: its text is the URI or the path, and its key in the local
cache is a hash of that text alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from harvester.errors import HarvesterError

__all__ = ["REMOTE_SCHEMES", "Location", "StorageOptions", "storage_env"]

REMOTE_SCHEMES = ("s3", "gs", "abfs")
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
CACHE_DIR = "harvester"


@dataclass(frozen=True)
class StorageOptions:
    """The job's ``storage:`` block: where an S3-compatible store answers, in which region,
    and whether to write to a store that ignores conditional writes (unfenced)."""

    endpoint: str | None = None
    region: str | None = None
    allow_unfenced: bool = False


@dataclass(frozen=True)
class Location:
    """An output's place: a local folder, or ``scheme://bucket/prefix`` in an object store."""

    scheme: str  # "file" for a local folder
    root: str  # a local path, or "bucket/prefix" (no leading or trailing slash)
    storage: StorageOptions = field(default_factory=StorageOptions, compare=False)

    @classmethod
    def parse(cls, text: str, storage: StorageOptions | None = None) -> Location:
        """A location from a job's ``output`` text; a local path is expanded (``~``)."""
        scheme, sep, rest = text.partition("://")
        storage = storage or StorageOptions()
        if not sep:
            return cls.local(Path(text).expanduser(), storage)
        scheme = scheme.lower()
        if scheme == "file":
            return cls.local(Path(rest), storage)
        if scheme not in REMOTE_SCHEMES:
            known = ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
            raise ValueError(f"unsupported storage scheme {scheme}://: expected a path or {known}")
        root = str(PurePosixPath("/" + rest.strip("/")))[1:]
        if not root or rest.startswith("/") or root.startswith("."):
            raise ValueError(f"expected {scheme}://BUCKET/PREFIX, found {text!r}")
        return cls(scheme, root, storage)

    @classmethod
    def local(cls, path: str | os.PathLike[str], storage: StorageOptions | None = None) -> Location:
        """A local folder (relative paths stay relative, as the job wrote them)."""
        return cls("file", str(Path(path)), storage or StorageOptions())

    @property
    def is_local(self) -> bool:
        """Whether the output is a folder on this machine."""
        return self.scheme == "file"

    @property
    def path(self) -> Path:
        """The local folder; ValueError for an object store (it has none)."""
        if not self.is_local:
            raise ValueError(f"{self} is not a local folder")
        return Path(self.root)

    @property
    def bucket(self) -> str:
        """The bucket (or container) of an object store location."""
        return self.root.split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket ("" for the bucket's top)."""
        return self.root.partition("/")[2]

    def join(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under this location (what pyarrow takes)."""
        if self.is_local:
            return str(Path(self.root, *parts))
        return "/".join([self.root, *parts])

    def __truediv__(self, part: str) -> Location:
        return Location(self.scheme, self.join(part), self.storage)

    def __str__(self) -> str:
        return self.root if self.is_local else f"{self.scheme}://{self.root}"

    def __fspath__(self) -> str:
        return str(self.path)

    def cache_key(self) -> str:
        """A short hash of the URI (never of credentials): the local cache's folder name."""
        return hashlib.sha256(str(self).encode()).hexdigest()[:16]

    def filesystem(self, env: Mapping[str, str] | None = None) -> Any:
        """A pyarrow filesystem for this location (credentials from the environment).

        One object per store and configuration in a process: each new S3 filesystem sets up
        its own client, credential lookup and connection pool. The configuration includes the
        environment the store reads (endpoint, region, credentials), so a changed environment
        gets a filesystem of its own.
        """
        env = os.environ if env is None else env
        key = (self.scheme, self.bucket if not self.is_local else "", self.storage, _store_env(env))
        found = _FILESYSTEMS.get(key)
        if found is None:
            found = _FILESYSTEMS[key] = self._new_filesystem(env)
        return found

    def _new_filesystem(self, env: Mapping[str, str]) -> Any:
        import pyarrow.fs as pafs

        if self.is_local:
            return pafs.LocalFileSystem()
        if self.scheme == "s3":
            options: dict[str, Any] = {}
            endpoint = self.storage.endpoint or _first(env, ENDPOINT_VARS)
            region = self.storage.region or _first(env, REGION_VARS)
            if endpoint:
                scheme, _, host = endpoint.partition("://")
                options["endpoint_override"] = host if _ else endpoint
                options["scheme"] = scheme if _ else "https"
            if region:
                options["region"] = region
            return pafs.S3FileSystem(**options)
        if self.scheme == "gs":
            return pafs.GcsFileSystem()
        try:
            return pafs.AzureFileSystem(account_name=env["AZURE_STORAGE_ACCOUNT_NAME"])
        except KeyError:
            raise HarvesterError(
                f"{self}: set AZURE_STORAGE_ACCOUNT_NAME to the storage account"
            ) from None


# Filesystems made so far, by store and configuration (see Location.filesystem).
_FILESYSTEMS: dict[tuple[str, str, StorageOptions, str], Any] = {}
_STORE_VARS = ("AWS_", "GOOGLE_", "AZURE_", "GCS_")


def _store_env(env: Mapping[str, str]) -> str:
    """A digest of the variables a store's client reads (never the values themselves)."""
    relevant = sorted((k, v) for k, v in env.items() if k.startswith(_STORE_VARS))
    return hashlib.sha256(repr(relevant).encode()).hexdigest()


def storage_env(location: Location, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The endpoint and region an S3 client (boto3, deltalake) should use for ``location``."""
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    endpoint = location.storage.endpoint or _first(env, ENDPOINT_VARS)
    region = location.storage.region or _first(env, REGION_VARS)
    if endpoint:
        found["endpoint"] = endpoint
    if region:
        found["region"] = region
    return found


def user_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/harvester`` or ``~/.cache/harvester``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / CACHE_DIR


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` set (non-empty) in ``env``."""
    return next((env[n] for n in names if env.get(n)), None)
