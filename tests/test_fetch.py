"""One unit fetched to the end, on a driven clock: how waits the API asks for are weighed.

A 429 is neither a success nor a failure for the circuit breaker; its Retry-After is honoured
while it fits in what is left of the breaker's window since the last success, and ends the run
(CircuitOpen) when it does not.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime

import pytest

from harvester.errors import CircuitOpen, HttpError, NetworkError
from harvester.fetch.fetcher import UnitFetcher
from harvester.fetch.retry import CircuitBreaker, build_retrying
from harvester.job.model import Discovery, RetrySettings
from harvester.model import Fetched, RateLimit, Unit
from harvester.pacing.limiter import RateLimiter
from tests.test_ratelimit import FakeTime, ManualTime

UNITS = [Unit("d3m0h45h", date(2026, 3, day), date(2026, 3, day)) for day in range(1, 6)]
NOW = datetime(2026, 3, 10, tzinfo=UTC)


class Client:
    """Answers each unit from its own script: an error to raise, or success."""

    def __init__(self, *script: BaseException | None) -> None:
        self.script = list(script)
        self.calls = 0

    async def get_stats(self, unit: Unit) -> Fetched:
        self.calls += 1
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return Fetched(unit, NOW, 1, 1, 1, 1, ())


def _429(retry_after: float | None) -> HttpError:
    return HttpError("HTTP 429", status=429, retry_after=retry_after)


def _fetcher(
    client: Client, time: FakeTime | ManualTime, *, window: float, attempts: int = 6
) -> tuple[UnitFetcher, RateLimiter, CircuitBreaker]:
    limiter = RateLimiter([RateLimit(100, 1.0)], clock=time.clock, sleep=time.sleep)
    breaker = CircuitBreaker(window, clock=time.clock)
    settings = RetrySettings(attempts=attempts, max_backoff_seconds=1.0)
    retrying = build_retrying(settings, breaker, sleep=time.sleep)
    fetcher = UnitFetcher(client, limiter, retrying, breaker, max_attempts=attempts)  # type: ignore[arg-type]
    return fetcher, limiter, breaker


async def test_a_retry_after_longer_than_the_breaker_allows_ends_the_run_at_once() -> None:
    time = FakeTime()
    client = Client(_429(3600))
    fetcher, limiter, _ = _fetcher(client, time, window=5.0)
    with pytest.raises(CircuitOpen) as info:
        await fetcher.fetch(UNITS[0])
    message = str(info.value)
    assert "the API asked to wait 3600 s (HTTP 429, Retry-After)" in message
    assert "retry.circuit_breaker_seconds 5" in message and "committed work is kept" in message
    assert info.value.exit_code == 1
    cause = info.value.__cause__
    assert isinstance(cause, HttpError) and cause.unit == UNITS[0] and cause.attempts == 1
    assert client.calls == 1 and time.now == 0.0  # nothing sat out, no retry
    assert limiter.pauses == 0 and fetcher.stats.rate_limit_answers == 1


async def test_a_retry_after_beyond_a_day_ends_the_run_too() -> None:
    fetcher, _, _ = _fetcher(Client(_429(200_000)), FakeTime(), window=600.0)
    with pytest.raises(CircuitOpen, match="asked to wait 200000 s"):
        await fetcher.fetch(UNITS[0])


async def test_what_is_allowed_is_the_window_less_the_time_since_the_last_success() -> None:
    time = FakeTime()
    client = Client(None, _429(1.5), None, _429(3.0))
    fetcher, limiter, breaker = _fetcher(client, time, window=10.0)
    await fetcher.fetch(UNITS[0])  # a success at 0
    time.now = 8.0
    assert breaker.wait_allowed == pytest.approx(2.0)
    await fetcher.fetch(UNITS[1])  # 1.5 s fits in the 2 s left: waited, retried, fetched
    assert time.now == pytest.approx(9.5) and limiter.pauses == 1
    assert breaker.wait_allowed == pytest.approx(10.0)  # that retry succeeded at 9.5
    time.now = 17.5
    with pytest.raises(CircuitOpen, match=r"allows 2\.0 s more .*8\.0 s without a success"):
        await fetcher.fetch(UNITS[2])  # 3 s does not fit in the 2 s left


async def test_failures_do_not_reset_the_time_since_the_last_success() -> None:
    time = FakeTime()
    client = Client(NetworkError("reset"), NetworkError("reset"), _429(4.0))
    fetcher, _, breaker = _fetcher(client, time, window=5.0)
    with pytest.raises(CircuitOpen, match=r"asked to wait 4\.0 s"):
        await fetcher.fetch(UNITS[0])  # two backoffs (up to ~2.5 s) ate into the window
    assert breaker.since_success > 1.0


async def test_429s_without_retry_after_end_the_run_once_the_window_is_spent() -> None:
    time = FakeTime()
    fetcher, limiter, _ = _fetcher(Client(*[_429(None)] * 100), time, window=3.0, attempts=100)
    with pytest.raises(CircuitOpen, match="kept answering HTTP 429 without a Retry-After"):
        await fetcher.fetch(UNITS[0])
    assert 2.0 < time.now <= 3.0 and limiter.pauses >= 2


async def test_an_accepted_wait_is_logged_once_however_many_workers_hit_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = ManualTime()
    client = Client(_429(2.0), _429(2.0), _429(2.0))
    fetcher, limiter, _ = _fetcher(client, time, window=600.0)
    caplog.set_level(logging.INFO, logger="harvester.fetch")
    fetched = await time.run(asyncio.gather(*(fetcher.fetch(unit) for unit in UNITS[:3])))
    assert [f.unit for f in fetched] == UNITS[:3]
    assert limiter.pauses == 3 and time.now == pytest.approx(2.0, abs=0.6)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{UNITS[0]}: HTTP 429; pausing the key 2.00 s (Retry-After)"]


async def test_a_later_pause_is_news_again(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    fetcher, _, _ = _fetcher(Client(_429(2.0), None, _429(2.0)), time, window=600.0)
    await fetcher.fetch(UNITS[0])
    await fetcher.fetch(UNITS[1])  # the first pause is over by now
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2


# --- discovery is bounded, whatever getList answers -----------------------------------------


class Lister:
    """A getList that never ends: each page holds ``new`` collections not listed before, the
    rest of the page repeats the first collection."""

    def __init__(self, new: int) -> None:
        self.new = new
        self.pages = 0

    async def list_page(self, first: int, count: int, **_: object) -> list[str]:
        self.pages += 1
        fresh = [f"c{first + i:07d}" for i in range(self.new)]
        return fresh + ["c0000000"] * (count - self.new)


@pytest.mark.parametrize(
    ("new", "pages", "found", "bound"),
    [
        (50, 4, 200, "discover.max_collections (200)"),  # full pages of new ones: the count
        (1, 8, 8, "8 pages (twice what discover.max_collections 200 fills)"),  # a trickle
    ],
)
async def test_an_endless_collection_list_stops_at_a_bound_named_in_a_warning(
    new: int, pages: int, found: int, bound: str, caplog: pytest.LogCaptureFixture
) -> None:
    lister = Lister(new)
    fetcher, _, _ = _fetcher(lister, FakeTime(), window=600)  # type: ignore[arg-type]
    discovery = Discovery(date(2026, 3, 1), date(2026, 3, 1), max_collections=200)
    with caplog.at_level(logging.WARNING, logger="harvester.fetch"):
        hashes = await fetcher.discover(discovery)
    assert lister.pages == pages and len(hashes) == found == len(set(hashes))
    assert [r.getMessage() for r in caplog.records if bound in r.getMessage()]
