"""The client's unit tests: signing, one request, classification, payload validation.

HTTP is mocked with aioresponses here only; end-to-end tests go through the simulator.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from harvester.api import sign
from harvester.errors import (
    ApiBusy,
    ApiRejected,
    BadResponse,
    CredentialsRejected,
    HttpError,
    InvalidPayload,
    NetworkError,
    RateLimited,
    RequestTimeout,
)
from harvester.fetch.client import StatsClient, classify, parse_stats
from harvester.job.credentials import Credentials
from harvester.model import Fetched, Unit

BASE = "https://api.example.test/v1/"
ANY_URL = re.compile(r"^https://api\.example\.test/v1/.*$")
KEY, SECRET = "test-key-123456", "test-secret-abcdef"
UNIT = Unit("d3m0h45h", date(2026, 1, 1), date(2026, 1, 7))
NOW = datetime(2026, 1, 8, 3, 0, tzinfo=UTC)


class _Response(aiohttp.ClientResponse):
    """aioresponses (0.7.9) builds responses without aiohttp 3.14's new ``stream_writer``."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


_NEEDS_SHIM = "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters


@pytest.fixture
def answer() -> Iterator[Callable[..., None]]:
    """Queue one mocked answer for the next request to the API."""
    with aioresponses() as mock:
        extra = {"response_class": _Response} if _NEEDS_SHIM else {}
        yield lambda **kwargs: mock.get(ANY_URL, **extra, **kwargs)


def test_published_signature_example() -> None:
    params = {
        "apiKey": "45FD-267-7SG7832",
        "action": "collection.getCollection",
        "collectionHash": "fxh4k89",
    }
    assert sign(params, "123ABCDE-456-7890-FGH") == "26e781d3d1751d82ec284acf4a019def"


def test_signature_ignores_signature_and_file_parameters() -> None:
    params = {"action": "a", "apiKey": "k"}
    expected = sign(params, "s")
    assert sign({**params, "signature": "x", "file": "y"}, "s") == expected
    assert sign({**params, "other": "z"}, "s") != expected


@pytest.fixture
async def client() -> Any:
    async with aiohttp.ClientSession() as session:
        yield StatsClient(session, BASE, Credentials(KEY, SECRET), now=lambda: NOW)


def test_params_are_signed_over_everything_sent() -> None:
    client = StatsClient(None, BASE, Credentials(KEY, SECRET))  # type: ignore[arg-type]
    params = client.params(UNIT)
    assert params["startDate"] == "2026-01-01" and params["endDate"] == "2026-01-07"
    assert params["includePageStats"] == "true"
    unsigned = {k: v for k, v in params.items() if k != "signature"}
    assert params["signature"] == sign(unsigned, SECRET)


def _ok(data: Any) -> dict[str, Any]:
    return {"code": 20, "status": "OK", "data": data}


GOOD = {
    "impressions": 723,
    "views": 1240,
    "time_spent": 53,
    "downloads": 4,
    "likes": 1,
    "pages": [
        {"page": 2, "time_spent": 89382, "clicks": 171, "views": 4130},
        {"page": 1, "time_spent": 127443, "clicks": 392, "views": 4529},
    ],
}


async def test_success_parses_the_vendor_example(client: StatsClient, answer: Any) -> None:
    answer(payload=_ok(GOOD))
    result = await client.get_stats(UNIT)
    assert result == Fetched(
        UNIT, NOW, 723, 1240, 53, 4, ((1, 4529, 392, 127443), (2, 4130, 171, 89382))
    )


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (22, ApiBusy),
        (38, ApiBusy),
        (31, RateLimited),
        (32, RateLimited),
        (30, ApiRejected),
        (40, ApiRejected),
        (42, ApiRejected),
        (43, ApiRejected),
        (46, ApiRejected),
        (99, ApiRejected),
    ],
)
async def test_api_codes_are_classified(
    client: StatsClient, code: int, error: type, answer: Any
) -> None:
    answer(payload={"code": code, "status": "x", "data": None})
    with pytest.raises(error) as info:
        await client.get_stats(UNIT)
    assert info.value.code == code
    assert info.value.transient is (code in (22, 31, 32, 38))


@pytest.mark.parametrize("code", [41, 44])
async def test_credential_codes_stop_the_run(client: StatsClient, code: int, answer: Any) -> None:
    answer(payload={"code": code, "status": "x"})
    with pytest.raises(CredentialsRejected) as info:
        await client.get_stats(UNIT)
    assert info.value.code == code and info.value.exit_code == 3


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_http_failures_are_transient(client: StatsClient, status: int, answer: Any) -> None:
    answer(
        status=status,
        body="<html>bad gateway</html>",
        content_type="text/html",
        headers={"Retry-After": "7"},
    )
    with pytest.raises(HttpError) as info:
        await client.get_stats(UNIT)
    assert info.value.transient and info.value.status == status
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3600", 3600.0), ("86400", 86400.0), ("31536000", 31536000.0), ("0.5", 0.5), ("0", 0.0)],
)
async def test_long_retry_after_values_are_kept_not_dropped(
    client: StatsClient, answer: Any, header: str, seconds: float
) -> None:
    # However long: the fetcher weighs it against the circuit breaker and may end the run.
    answer(status=429, body="Too Many Requests", headers={"Retry-After": header})
    with pytest.raises(HttpError) as info:
        await client.get_stats(UNIT)
    assert info.value.retry_after == seconds


@pytest.mark.parametrize("header", ["-1", "soon", "nan", "Wed, 21 Oct 2026 07:28:00 GMT"])
async def test_unusable_retry_after_values_are_none(
    client: StatsClient, answer: Any, header: str
) -> None:
    answer(status=429, body="Too Many Requests", headers={"Retry-After": header})
    with pytest.raises(HttpError) as info:
        await client.get_stats(UNIT)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    "body",
    [
        b"<html>maintenance</html>",
        b'{"code": 20, "data": {"impr',
        b"[1, 2]",
        b'{"status": "OK"}',
        b"\xff\xfe",
    ],
)
async def test_bodies_that_are_not_the_envelope_are_transient(
    client: StatsClient, body: bytes, answer: Any
) -> None:
    answer(body=body)
    with pytest.raises(BadResponse):
        await client.get_stats(UNIT)


async def test_network_errors_are_translated_without_the_url(
    client: StatsClient, answer: Any
) -> None:
    answer(exception=aiohttp.ClientConnectionError(f"reset while reading {BASE}?apiKey={KEY}"))
    with pytest.raises(NetworkError) as info:
        await client.get_stats(UNIT)
    assert KEY not in str(info.value)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)


async def test_timeouts_are_translated(client: StatsClient, answer: Any) -> None:
    answer(exception=TimeoutError())
    with pytest.raises(RequestTimeout):
        await client.get_stats(UNIT)


def _parse(data: Any, page_stats: bool = True) -> Fetched:
    return parse_stats(UNIT, data, page_stats=page_stats, fetched_at=NOW)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(views=-1), "views"),
        (lambda d: d.update(views=1.5), "views"),
        (lambda d: d.update(views="12"), "views"),
        (lambda d: d.update(views=True), "views"),
        (lambda d: d.pop("downloads"), "downloads"),
        (lambda d: d.update(impressions=10**18), "impressions"),
        (lambda d: d.pop("pages"), "pages"),
        (lambda d: d.update(pages={"page": 1}), "pages"),
        (
            lambda d: d["pages"].append({"page": 1, "views": 0, "clicks": 0, "time_spent": 0}),
            "twice",
        ),
        (lambda d: d["pages"][0].update(page="1"), "page"),
        (lambda d: d["pages"][0].update(page=2**31), "page"),
        (lambda d: d["pages"][0].pop("clicks"), "clicks"),
        (lambda d: d["pages"][0].update(time_spent=-5), "time_spent"),
    ],
)
def test_invalid_payloads_are_refused_with_the_reason(mutate: Any, reason: str) -> None:
    data = {**GOOD, "pages": [dict(p) for p in GOOD["pages"]]}
    mutate(data)
    with pytest.raises(InvalidPayload) as info:
        _parse(data)
    assert reason in info.value.reason
    assert info.value.payload is data
    assert not info.value.transient


def test_payload_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidPayload):
        _parse(None)


def test_pages_are_not_required_when_not_asked_for() -> None:
    data = {k: v for k, v in GOOD.items() if k != "pages"}
    assert _parse(data, page_stats=False).pages == ()


def test_zero_traffic_and_no_pages_is_valid() -> None:
    result = _parse({"impressions": 0, "views": 0, "time_spent": 0, "downloads": 0, "pages": []})
    assert result.pages == () and result.views == 0


def test_classify_reads_the_code_on_any_status_but_data_only_on_200() -> None:
    with pytest.raises(ApiRejected):
        classify(200, b'{"code": 43, "status": "Forbidden"}', None)
    with pytest.raises(ApiRejected):
        classify(404, b'{"code": 43, "status": "Forbidden"}', None)
    with pytest.raises(CredentialsRejected):
        classify(401, b'{"code": 41}', None)
    assert classify(200, b'{"code": 20, "data": {"x": 1}}', None) == {"x": 1}
    for status in (201, 204, 302, 304, 404):
        with pytest.raises(BadResponse, match=f"HTTP {status} with a code-20 body"):
            classify(status, b'{"code": 20, "data": {"x": 1}}', None)
