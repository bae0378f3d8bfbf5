"""YAML job file → frozen, typed job objects. All validation of user input lives here.

Every problem is reported as a :class:`~harvester.errors.Problem` naming the file, the field
path and what was expected; all problems of a file are collected and raised together as one
:class:`~harvester.errors.JobError` (exit 2). Nothing downstream touches raw dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

DEFAULT_BASE_URL = "https://api.flipsnack.com/v1/"
SIMULATOR_BASE_URL = "simulator"  # start the bundled simulator in-process (the demo)
DEFAULT_KEY_ENV = "FLIPSNACK_API_KEY"
DEFAULT_SECRET_ENV = "FLIPSNACK_API_SECRET"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CONCURRENCY = 4
DEFAULT_ATTEMPTS = 6
DEFAULT_MAX_BACKOFF_SECONDS = 60.0
DEFAULT_CIRCUIT_BREAKER_SECONDS = 600.0
DEFAULT_GRANULARITY = "day"
DEFAULT_OUTPUT = "output"
DEFAULT_REFRESH_DAYS = 0
GRANULARITIES = ("day", "week", "month", "range")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``calls`` calls in any ``seconds``-long sliding window."""

    calls: int
    seconds: float


DEFAULT_RATE_LIMITS = (RateLimit(5, 1.0), RateLimit(60, 60.0))


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Where the API is and how to talk to it; credentials are named, never held."""

    base_url: str = DEFAULT_BASE_URL
    key_env: str = DEFAULT_KEY_ENV
    secret_env: str = DEFAULT_SECRET_ENV
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    rate_limits: tuple[RateLimit, ...] = DEFAULT_RATE_LIMITS

    @property
    def uses_simulator(self) -> bool:
        """True when the job asks for the bundled, in-process simulator."""
        return self.base_url == SIMULATOR_BASE_URL


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Per-unit attempts and backoff cap; the run-wide circuit breaker window."""

    attempts: int = DEFAULT_ATTEMPTS
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS
    circuit_breaker_seconds: float = DEFAULT_CIRCUIT_BREAKER_SECONDS


@dataclass(frozen=True, slots=True)
class Collection:
    """One flipbook to harvest over an inclusive date range."""

    hash: str
    start: date
    end: date


@dataclass(frozen=True, slots=True)
class Job:
    """A validated job file."""

    source: Path
    collections: tuple[Collection, ...]
    api: ApiSettings = field(default_factory=ApiSettings)
    concurrency: int = DEFAULT_CONCURRENCY
    retry: RetrySettings = field(default_factory=RetrySettings)
    granularity: str = DEFAULT_GRANULARITY
    page_stats: bool = True
    output: Path = Path(DEFAULT_OUTPUT)
    refresh_days: int = DEFAULT_REFRESH_DAYS


@dataclass(frozen=True, slots=True)
class Credentials:
    """The API key and secret; ``repr`` never shows them."""

    key: str
    secret: str

    def __repr__(self) -> str:
        return "Credentials(key='***', secret='***')"

    __str__ = __repr__


def load_job(path: Path, *, today: date | None = None) -> Job:
    """Read and validate a job file; raise JobError listing every problem found."""
    raise NotImplementedError


def parse_job(text: str, source: str, *, today: date | None = None) -> Job:
    """Validate job-file text (``source`` names it in messages); raise JobError."""
    raise NotImplementedError


def load_credentials(api: ApiSettings, env: Mapping[str, str]) -> Credentials:
    """Read the key and secret from the variables the job names (or ``<NAME>_FILE``)."""
    raise NotImplementedError
