"""One unit, fetched to the end: limiter, request, retries, circuit breaker, counters.

:class:`UnitFetcher` is what each worker of the pool calls. It returns the unit's validated
answer, or raises the unit's final :class:`~harvester.errors.UnitError` (with ``unit`` and
``attempts`` set), :class:`~harvester.errors.CredentialsRejected` (the run must stop), or
:class:`~harvester.errors.CircuitOpen` (the API has been down for too long, or asked, with a
429's Retry-After, for a wait longer than the circuit breaker's window still allows).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from tenacity import AsyncRetrying

from harvester.errors import (
    CircuitOpen,
    CredentialsRejected,
    HttpError,
    PermanentError,
    RateLimited,
    UnitError,
)
from harvester.fetch.client import StatsClient
from harvester.fetch.retry import CircuitBreaker
from harvester.job.model import Discovery
from harvester.model import Fetched, Unit
from harvester.pacing.protocol import Pacer

__all__ = ["FetchStats", "UnitFetcher"]

log = logging.getLogger("harvester.fetch")

LIST_PAGE_SIZE = 50  # records per collection.getList call; a shorter page is the last
DEFAULT_429_PAUSE_SECONDS = 1.0  # a 429 that does not say how long to wait


@dataclass
class FetchStats:
    """What the fetcher saw, for the run report."""

    errors: Counter[str] = field(default_factory=Counter)  # by error kind, every attempt
    answers: Counter[str] = field(default_factory=Counter)  # by answer code, every attempt
    retries: int = 0
    rate_limit_answers: int = 0


class UnitFetcher:
    """Fetch one unit with the run's limiter, retry policy and circuit breaker."""

    def __init__(
        self,
        client: StatsClient,
        limiter: Pacer,
        retrying: AsyncRetrying,
        breaker: CircuitBreaker,
        *,
        max_attempts: int,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._retrying = retrying
        self._breaker = breaker
        self._max_attempts = max_attempts
        self.stats = FetchStats()

    async def fetch(self, unit: Unit) -> Fetched:
        """Fetch ``unit`` with retries; see the module docstring for what it raises."""
        attempts = 0

        async def attempt() -> Fetched:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self.stats.retries += 1
            try:
                result = await self._client.get_stats(unit)
            except UnitError as exc:
                exc.unit, exc.attempts = unit, attempts
                self._observe(exc)
                raise
            except CredentialsRejected as exc:
                self.stats.answers[str(exc.code)] += 1
                raise
            self.stats.answers["20"] += 1
            self._breaker.record_success()
            return result

        # A copy per unit: tenacity keeps per-call state on the instance.
        try:
            return await self._retrying.copy()(attempt)
        except UnitError as exc:
            if exc.transient and self._breaker.is_open:
                raise CircuitOpen(
                    f"every call failed for {self._breaker.failing_for:.1f} s "
                    f"(last: {exc.kind}: {exc.reason}); the API looks down"
                ) from exc
            raise

    async def discover(self, discovery: Discovery) -> list[str]:
        """Every collection hash of the account that ``discovery`` selects, page by page.

        Bounded whatever the API answers: a full page that brings no hash not seen before ends
        the listing (an API that ignores ``from`` would answer the same page forever), and so
        do ``discovery.max_collections`` collections, or twice the pages they fill (an API
        that brings one new hash a page); each bound says so in a warning.
        """
        hashes: dict[str, None] = {}  # insertion-ordered set
        most = discovery.max_collections
        max_pages = 2 * -(-most // LIST_PAGE_SIZE)
        first = pages = 0
        while True:
            page = await self._list_page(discovery, first)
            pages += 1
            first += len(page)
            new = [h for h in page if h not in hashes]
            hashes.update(dict.fromkeys(new[: most - len(hashes)]))
            if len(page) < LIST_PAGE_SIZE:
                return list(hashes)
            if not new:
                log.warning(
                    "collection list: the page from record %d brought no collection not seen "
                    "before (the API seems to ignore 'from'); keeping the %d collections found",
                    first - len(page),
                    len(hashes),
                )
                return list(hashes)
            if len(hashes) >= most or pages >= max_pages:
                bound = (
                    f"discover.max_collections ({most})"
                    if len(hashes) >= most
                    else f"{max_pages} pages (twice what discover.max_collections {most} fills)"
                )
                log.warning(
                    "collection list: stopped at %s after %d pages; keeping the %d collections "
                    "found (raise discover.max_collections if the account holds more)",
                    bound,
                    pages,
                    len(hashes),
                )
                return list(hashes)

    async def _list_page(self, discovery: Discovery, first: int) -> list[str]:
        """One page of the collection list, with the same retries as a unit."""
        attempts = 0

        async def attempt() -> list[str]:
            nonlocal attempts
            attempts += 1
            try:
                page = await self._client.list_page(
                    first, LIST_PAGE_SIZE, status=discovery.status, query=discovery.query
                )
            except UnitError as exc:
                exc.attempts = attempts
                self._observe(exc)
                raise
            self.stats.answers["20"] += 1
            return page

        page: list[str] = await self._retrying.copy()(attempt)
        return page

    def _observe(self, exc: UnitError) -> None:
        """Count the failure, pace the key after a limit answer, feed the breaker, log it."""
        self.stats.errors[exc.kind] += 1
        self.stats.answers[_answer(exc)] += 1
        if isinstance(exc, RateLimited):
            self.stats.rate_limit_answers += 1
            paused = self._limiter.window_for_code(exc.code)
            distinct = self._limiter.pause(paused)
            log.log(
                logging.WARNING if distinct else logging.INFO,
                "%s: %s; pausing the key %.2f s",
                _what(exc),
                exc.reason,
                paused,
            )
            return
        if isinstance(exc, HttpError) and exc.status == 429:
            self.stats.rate_limit_answers += 1
            self._pause_as_asked(exc)
        elif isinstance(exc, PermanentError):
            self._breaker.record_success()  # the API answered; it just said no
            return
        else:
            self._breaker.record_failure()
        if exc.attempts < self._max_attempts:
            log.info(
                "%s: %s (%s), attempt %d/%d, retrying",
                _what(exc),
                exc.reason,
                exc.kind,
                exc.attempts,
                self._max_attempts,
            )

    def _pause_as_asked(self, exc: HttpError) -> None:
        """Pause the key for a 429's Retry-After (1 s without one), or raise CircuitOpen when
        the wait reaches past what the breaker allows: a 429 is neither a success nor a
        failure, so the breaker alone would let such answers hold the run forever."""
        asked = exc.retry_after
        seconds = asked if asked is not None else DEFAULT_429_PAUSE_SECONDS
        allowed = self._breaker.wait_allowed
        if seconds > allowed:
            shown = f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"
            what = (
                f"the API asked to wait {shown} s (HTTP 429, Retry-After)"
                if asked is not None
                else "the API kept answering HTTP 429 without a Retry-After"
            )
            raise CircuitOpen(
                f"{what}; the circuit breaker allows {max(allowed, 0.0):.1f} s more "
                f"(retry.circuit_breaker_seconds {self._breaker.window:g}, "
                f"{self._breaker.since_success:.1f} s without a success): stopping; "
                f"committed work is kept, run again later"
            ) from exc
        if self._limiter.pause(seconds):
            log.warning(
                "%s: HTTP 429; pausing the key %.2f s (%s)",
                _what(exc),
                seconds,
                "Retry-After" if asked is not None else "no Retry-After",
            )


def _answer(exc: UnitError) -> str:
    """What a failed attempt got back, as a bounded key: the API's code, ``http_<status>``, or
    the failure's kind (``network``, ``timeout``, ``bad_response``, ``invalid_payload``)."""
    if exc.code is not None:
        return str(exc.code)
    if isinstance(exc, HttpError):
        return f"http_{exc.status}"
    return exc.kind


def _what(exc: UnitError) -> str:
    """What failed, for a log line: the unit, or the collection list."""
    return str(exc.unit) if exc.unit is not None else "collection list"
