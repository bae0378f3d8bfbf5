"""The job, as typed values: API settings, retry settings, collections, accounts, defaults.

A job file becomes these frozen objects at the edge (:mod:`harvester.job.parse`); nothing
downstream touches raw dicts. The defaults and bounds are named constants here, so the parser,
the docs and the tests read them from one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from harvester.api import (
    DEFAULT_BASE_URL,
    DEFAULT_RATE_LIMITS,
    SIMULATOR_ENDPOINT,
    canonical_endpoint,
)
from harvester.job.fields import (
    HASH,
)
from harvester.job.location import Location
from harvester.layout import DEFAULT_ACCOUNT
from harvester.model import RateLimit

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "SIMULATOR_BASE_URL",
    "Account",
    "ApiSettings",
    "CatalogSettings",
    "Collection",
    "Discovery",
    "Job",
    "RateLimit",
    "RetrySettings",
    "account_discovered",
    "accounts_of",
    "endpoints_of",
]

SIMULATOR_BASE_URL = SIMULATOR_ENDPOINT  # start the bundled simulator in-process (the demo)
DEFAULT_KEY_ENV = "FLIPSNACK_API_KEY"
DEFAULT_SECRET_ENV = "FLIPSNACK_API_SECRET"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CONCURRENCY = 4
DEFAULT_ATTEMPTS = 6
DEFAULT_MAX_BACKOFF_SECONDS = 60.0
DEFAULT_CIRCUIT_BREAKER_SECONDS = 600.0
DEFAULT_GRANULARITY = "day"
DEFAULT_OUTPUT = "output"
DEFAULT_FORMAT = "parquet"
FORMATS = ("parquet", "delta", "iceberg")
# format: iceberg: the pyiceberg catalog that holds the tables (the job's ``catalog:`` block).
CATALOG_TYPES = ("sql", "rest", "glue", "hive", "dynamodb", "bigquery")
DEFAULT_CATALOG_NAME = "harvester"  # a SqlCatalog keys its rows by the catalog's name
DEFAULT_NAMESPACE = "harvester"
DEFAULT_REFRESH_DAYS = 0
# The largest answer read, counted after decompression: a getStats answer of 100,000 pages is
# about 6 MiB. Bounded so that concurrency × the cap stays far from the machine's memory.
DEFAULT_MAX_ANSWER_MIB = 8.0
MAX_ANSWER_MIB = 256.0
MIB = 1 << 20
# The most collections a discovery lists (its pages are bounded too: see the fetcher).
DEFAULT_MAX_COLLECTIONS = 100_000
MAX_COLLECTIONS = 10_000_000

MAX_CONCURRENCY = 1000
MAX_ATTEMPTS = 100
# Upper bounds far beyond any sensible value, so that dates and timers stay in range.
MAX_REFRESH_DAYS = 36_600  # about a century
MAX_TIMEOUT_SECONDS = 3_600  # an hour
MAX_BACKOFF_SECONDS = 86_400  # a day
MAX_CIRCUIT_BREAKER_SECONDS = 604_800  # a week
MAX_WINDOW_SECONDS = 2_678_400  # 31 days: a monthly quota
MAX_WINDOW_CALLS = 1_000_000


ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_ACCOUNTS = 1000
COLLECTION_STATUSES = ("public", "editable", "unlisted")
REDIS_SCHEMES = ("redis", "rediss")
REDIS_PASSWORD_ENV = "HARVESTER_REDIS_PASSWORD"


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Where the API is and how to talk to it; credentials are named, never held."""

    base_url: str = DEFAULT_BASE_URL
    key_env: str = DEFAULT_KEY_ENV
    secret_env: str = DEFAULT_SECRET_ENV
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    rate_limits: tuple[RateLimit, ...] = DEFAULT_RATE_LIMITS
    rate_budget: str | None = None  # redis://host:port/db: the key's budget across hosts
    max_answer_mib: float = DEFAULT_MAX_ANSWER_MIB  # a larger answer fails its unit

    @property
    def uses_simulator(self) -> bool:
        """True when the job asks for the bundled, in-process simulator."""
        return self.base_url == SIMULATOR_BASE_URL

    @property
    def endpoint(self) -> str:
        """The API's one spelling (see :func:`harvester.api.canonical_endpoint`)."""
        return canonical_endpoint(self.base_url)

    @property
    def max_answer_bytes(self) -> int:
        """The answer cap in bytes."""
        return int(self.max_answer_mib * MIB)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Per-unit attempts and backoff cap; the run-wide circuit breaker window."""

    attempts: int = DEFAULT_ATTEMPTS
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS
    circuit_breaker_seconds: float = DEFAULT_CIRCUIT_BREAKER_SECONDS


@dataclass(frozen=True, slots=True)
class CatalogSettings:
    """The Iceberg catalog of ``format: iceberg``; secrets are named (``secrets``), never held.

    ``uri`` None with type ``sql``: a SQLite file inside a local output (``_harvester/``).
    """

    type: str = "sql"
    uri: str | None = None
    name: str = DEFAULT_CATALOG_NAME
    namespace: str = DEFAULT_NAMESPACE
    warehouse: str | None = None
    properties: tuple[tuple[str, str], ...] = ()  # given to pyiceberg as they are
    secrets: tuple[tuple[str, str], ...] = ()  # (property, environment variable holding it)

    @property
    def is_default(self) -> bool:
        """Whether this is the output's own SQLite catalog (a local output only)."""
        return self.type == "sql" and self.uri is None and "uri" not in dict(self.secrets)


@dataclass(frozen=True, slots=True)
class Collection:
    """One flipbook to harvest over an inclusive date range."""

    hash: str
    start: date
    end: date


@dataclass(frozen=True, slots=True)
class Discovery:
    """Harvest every collection of the account (``collection.getList``) over the job's range."""

    start: date
    end: date
    status: str | None = None  # public | editable | unlisted; None: all
    query: str | None = None  # the API's search in title and description
    max_collections: int = DEFAULT_MAX_COLLECTIONS  # the listing stops there, with a warning


@dataclass(frozen=True, slots=True)
class Account:
    """One Flipsnack account of a job: a name (a label, never the key), its API settings
    (the job's ``api`` with the account's own credentials' names, limits and budget), its
    collections and its discovery."""

    name: str
    api: ApiSettings
    collections: tuple[Collection, ...] = ()
    discover: Discovery | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A validated job file.

    With ``accounts``, ``collections`` holds every account's collections (each hash under one
    account) and ``discover`` is None: each account has its own.
    """

    source: Path
    collections: tuple[Collection, ...]
    api: ApiSettings = field(default_factory=ApiSettings)
    concurrency: int = DEFAULT_CONCURRENCY
    retry: RetrySettings = field(default_factory=RetrySettings)
    granularity: str = DEFAULT_GRANULARITY
    page_stats: bool = True
    output: Location = field(default_factory=lambda: Location.local(DEFAULT_OUTPUT))
    format: str = DEFAULT_FORMAT  # parquet | delta | iceberg
    catalog: CatalogSettings | None = None  # format: iceberg; None: the output's own SQLite
    refresh_days: int = DEFAULT_REFRESH_DAYS
    discover: Discovery | None = None
    accounts: tuple[Account, ...] = ()


def accounts_of(job: Job) -> tuple[Account, ...]:
    """The job's accounts; a job without ``accounts`` has one, named ``default``."""
    if job.accounts:
        return job.accounts
    return (Account(DEFAULT_ACCOUNT, job.api, job.collections, job.discover),)


def endpoints_of(job: Job) -> dict[str, str]:
    """Each account's API endpoint, in its one canonical spelling."""
    return {a.name: a.api.endpoint for a in accounts_of(job)}


def account_discovered(job: Job, account: Account, hashes: Iterable[str]) -> tuple[Job, Account]:
    """``job`` and ``account`` plus the discovered hashes no account of the job lists yet."""
    if account.discover is None:
        return job, account
    listed = {c.hash for c in job.collections}
    added = tuple(
        Collection(h, account.discover.start, account.discover.end)
        for h in dict.fromkeys(hashes)
        if h not in listed and HASH.fullmatch(h)
    )
    grown = replace(account, collections=account.collections + added)
    if not job.accounts:
        return replace(job, collections=job.collections + added), grown
    accounts = tuple(grown if a.name == account.name else a for a in job.accounts)
    return replace(job, collections=job.collections + added, accounts=accounts), grown
