"""One request, its answer parsed and classified: ``collection.getStats`` and ``getList``.

This is the one place where aiohttp and asyncio exceptions become the harvester's own
(:mod:`harvester.errors`), raised ``from`` the original; :mod:`harvester.fetch.answer` does the
same for JSON. Each attempt has one deadline, from its admission by the pacer to the last byte
of its body, and its body one cap. Messages name codes and reasons, never URLs: the query
string carries the API key and the signature.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from yarl import URL

from harvester.api import GET_LIST, GET_STATS, sign
from harvester.errors import InvalidPayload, NetworkError, RequestTimeout
from harvester.fetch.answer import classify, read_body
from harvester.fetch.deadline import attempt_deadline
from harvester.job.credentials import Credentials
from harvester.job.model import DEFAULT_MAX_ANSWER_MIB, DEFAULT_TIMEOUT_SECONDS, MIB
from harvester.model import Fetched, Unit
from harvester.redact import redact

__all__ = [
    "Fetched",
    "StatsClient",
    "classify",
    "parse_stats",
]

# --- the payload --------------------------------------------------------------------------------

MAX_FIGURE = 10**15  # far above any real flipbook's traffic; larger means a broken answer
MAX_PAGE = 100_000  # far above any real flipbook's length; and `page` is an int32 column
COLLECTION_FIGURES = ("impressions", "views", "time_spent", "downloads")
PAGE_FIGURES = ("views", "clicks", "time_spent")


def _figure(value: Any, where: str) -> int:
    """A non-negative integer within MAX_FIGURE, or InvalidPayload naming where."""
    if type(value) is not int:  # bool is an int subclass; 3.0 and "3" are not integers here
        raise InvalidPayload(f"{where}: expected a non-negative integer, got {_kind(value)}")
    if value < 0 or value > MAX_FIGURE:
        raise InvalidPayload(f"{where}: {value} is out of range 0..{MAX_FIGURE}")
    return value


def _kind(value: Any) -> str:
    """A short, safe description of a JSON value's type for messages."""
    if value is None:
        return "null"
    return type(value).__name__


def _pages(raw: Any) -> tuple[tuple[int, int, int, int], ...]:
    """Validate the ``pages`` array into sorted (page, views, clicks, time_spent) tuples."""
    if not isinstance(raw, list):
        raise InvalidPayload(f"pages: expected an array, got {_kind(raw)}")
    rows: dict[int, tuple[int, int, int, int]] = {}
    for i, item in enumerate(raw):
        # The common case in one test, no message built: fifty pages a unit, every unit.
        if type(item) is dict:
            page, views = item.get("page"), item.get("views")
            clicks, spent = item.get("clicks"), item.get("time_spent")
            if (
                type(page) is int
                and type(views) is int
                and type(clicks) is int
                and type(spent) is int
                and 0 <= page <= MAX_PAGE
                and 0 <= views <= MAX_FIGURE
                and 0 <= clicks <= MAX_FIGURE
                and 0 <= spent <= MAX_FIGURE
                and page not in rows
            ):
                rows[page] = (page, views, clicks, spent)
                continue
        row = _page(i, item, rows)
        rows[row[0]] = row
    # Pages are unique, so sorting the rows sorts them by page.
    return tuple(sorted(rows.values()))


def _page(i: int, item: Any, rows: Mapping[int, object]) -> tuple[int, int, int, int]:
    """Check ``pages[i]`` one rule at a time; raise InvalidPayload naming the first broken one."""
    if not isinstance(item, dict):
        raise InvalidPayload(f"pages[{i}]: expected an object, got {_kind(item)}")
    page = item.get("page")
    if type(page) is not int or page < 0 or page > MAX_PAGE:
        raise InvalidPayload(f"pages[{i}].page: expected an integer from 0 to {MAX_PAGE}")
    if page in rows:
        raise InvalidPayload(f"pages[{i}].page: page {page} appears twice")
    views, clicks, spent = (_figure(item.get(f), f"pages[{i}].{f}") for f in PAGE_FIGURES)
    return (page, views, clicks, spent)


def parse_stats(unit: Unit, data: Any, *, page_stats: bool, fetched_at: datetime) -> Fetched:
    """Validate a code-20 ``data`` payload; raise InvalidPayload (with the payload) if it breaks."""
    try:
        if not isinstance(data, dict):
            raise InvalidPayload(f"data: expected an object, got {_kind(data)}")
        figures = [_figure(data.get(f), f) for f in COLLECTION_FIGURES]
        pages = _pages(data.get("pages")) if page_stats else ()
    except InvalidPayload as exc:
        exc.payload = data
        raise
    impressions, views, time_spent, downloads = figures
    return Fetched(unit, fetched_at, impressions, views, time_spent, downloads, pages, page_stats)


# --- one request --------------------------------------------------------------------------------

_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _quoted(text: str) -> str:
    """``quote_plus(text)``, as ``urlencode`` writes it; hashes, dates, hex need no quoting,
    and one regex test costs a fifth of quote_plus's four calls."""
    return text if _UNRESERVED.fullmatch(text) else quote_plus(text)


class StatsClient:
    """Signs and sends ``collection.getStats`` for one unit; one shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        credentials: Credentials,
        *,
        page_stats: bool = True,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_answer_bytes: int = int(DEFAULT_MAX_ANSWER_MIB * MIB),
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._credentials = credentials
        self._page_stats = page_stats
        self._now = now
        self._timeout = timeout_seconds
        self._cap = max_answer_bytes

    def params(self, unit: Unit) -> dict[str, str]:
        """The signed query parameters for one unit."""
        params = {
            "collectionHash": unit.collection_hash,
            "startDate": unit.start.isoformat(),
            "endDate": unit.end.isoformat(),
        }
        if self._page_stats:
            params["includePageStats"] = "true"
        return self._signed(GET_STATS, params)

    def _signed(self, action: str, params: dict[str, str]) -> dict[str, str]:
        """``params`` with the action, the key and the signature over all of them."""
        params = {"action": action, "apiKey": self._credentials.key, **params}
        params["signature"] = sign(params, self._credentials.secret)
        return params

    def url(self, unit: Unit) -> URL:
        """The request URL (it carries the key and signature: never log it)."""
        return self._url(self.params(unit))

    def _url(self, params: Mapping[str, str]) -> URL:
        query = "&".join(f"{_quoted(name)}={_quoted(value)}" for name, value in params.items())
        return URL(f"{self._base_url}?{query}", encoded=True)

    async def _call(self, url: URL) -> Any:
        """One attempt: send, read within the cap and the deadline, classify; the ``data`` of
        a code-20 answer. Raises only ours."""
        try:
            async with (
                attempt_deadline(self._timeout),
                self._session.get(url, allow_redirects=False) as response,
            ):
                body = await read_body(response, self._cap)
                status, retry_after = response.status, response.headers.get("Retry-After")
        except TimeoutError as exc:
            raise RequestTimeout(
                f"no complete answer within {self._timeout:g} s (api.timeout_seconds)"
            ) from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"{type(exc).__name__}: {redact(str(exc))}") from exc
        return classify(status, body, retry_after)

    async def get_stats(self, unit: Unit) -> Fetched:
        """One attempt at a unit's statistics, validated."""
        data = await self._call(self.url(unit))
        return parse_stats(unit, data, page_stats=self._page_stats, fetched_at=self._now())

    async def list_page(
        self, first: int, count: int, *, status: str | None = None, query: str | None = None
    ) -> list[str]:
        """One page of ``collection.getList``: the hashes of records ``first..first+count``."""
        params = {"from": str(first), "count": str(count)}
        if status is not None:
            params["collectionStatus"] = status
        if query is not None:
            params["query"] = query
        data = await self._call(self._url(self._signed(GET_LIST, params)))
        if not isinstance(data, list):
            raise InvalidPayload(f"collection list: expected an array, got {_kind(data)}")
        hashes = [item.get("hash") if isinstance(item, dict) else None for item in data]
        if not all(isinstance(h, str) and h for h in hashes):
            raise InvalidPayload("collection list: every record needs a string 'hash'")
        return [h for h in hashes if isinstance(h, str)]
