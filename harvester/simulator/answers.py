"""What the simulator answers: the JSON envelope, the two actions, and the injected faults.

Pure functions of the parameters and the config; the server adds checks that need state
(credentials, rate windows, the fault draw) in front of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from harvester.api import GET_LIST, GET_STATS
from harvester.simulator.config import HASH_PATTERN, ISO_DAY_PATTERN, SimulatorConfig
from harvester.simulator.data import expected_stats, pages_of

OK = 20
MAINTENANCE = 22
MISSING_PARAMETER = 30
PER_SECOND = 31
PER_MINUTE = 32
PROCESSING = 38
BAD_REQUEST = 40
INVALID_CREDENTIALS = 41
INVALID_ACTION = 42
FORBIDDEN = 43
INVALID_SIGNATURE = 44
INVALID_HASH = 46

STATUS_TEXT = {
    OK: "OK",
    MAINTENANCE: "Maintenance mode",
    MISSING_PARAMETER: "Missing mandatory parameter",
    PER_SECOND: "Requests per second limit exceeded",
    PER_MINUTE: "Requests per minute limit exceeded",
    PROCESSING: "Collection is in processing state",
    BAD_REQUEST: "Bad request",
    INVALID_CREDENTIALS: "Invalid credentials",
    INVALID_ACTION: "Invalid action",
    FORBIDDEN: "Forbidden",
    INVALID_SIGNATURE: "Invalid signature",
    INVALID_HASH: "Invalid collection hash",
}
MANDATORY = ("apiKey", "signature", "action")
DEFAULT_START = date(2020, 1, 1)
DEFAULT_LIST_COUNT = 50
COLLECTION_STATUSES = frozenset({"public", "editable", "unlisted"})
CATALOG_STATUS = "public"  # every simulated collection is public

JSON = "application/json"
HTML = "text/html"
TEXT = "text/plain"
_FAULT_CODES = {
    "code22": MAINTENANCE,
    "code38": PROCESSING,
    "code31": PER_SECOND,
    "code32": PER_MINUTE,
}
_HTTP_FAULTS = {"http500": 500, "http502": 502, "http503": 503}


@dataclass(frozen=True, slots=True)
class Answer:
    """One response to send, or not to send (``drop``), possibly after a ``stall``."""

    status: int = 200
    body: bytes = b""
    content_type: str = JSON
    code: int | None = None  # the API code, when the body is a whole envelope
    success: str | None = None  # "hash|start|end" of a code-20 getStats answer
    headers: Mapping[str, str] | None = None
    stall: float = 0.0
    drop: bool = False


def envelope(code: int, data: Any = None, *, success: str | None = None) -> Answer:
    """The API's JSON envelope with HTTP 200."""
    body = {"code": code, "status": STATUS_TEXT[code], "data": data}
    return Answer(body=json.dumps(body, separators=(",", ":")).encode(), code=code, success=success)


def missing_mandatory(params: Mapping[str, str]) -> bool:
    """True when apiKey, signature or action is absent or empty."""
    return not all(params.get(name) for name in MANDATORY)


def act(params: Mapping[str, str], config: SimulatorConfig, today: date) -> Answer:
    """The answer to an authenticated, admitted request that drew no fault."""
    action = params["action"]
    if action == GET_STATS:
        return _get_stats(params, config, today)
    if action == GET_LIST:
        return _get_list(params, config)
    return envelope(INVALID_ACTION)


def _day(params: Mapping[str, str], name: str, default: date) -> date | None:
    """The named YYYY-MM-DD parameter, ``default`` when absent, None when malformed."""
    text = params.get(name)
    if text is None:
        return default
    if not ISO_DAY_PATTERN.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _get_stats(params: Mapping[str, str], config: SimulatorConfig, today: date) -> Answer:
    collection_hash = params.get("collectionHash")
    if not collection_hash:
        return envelope(MISSING_PARAMETER)
    start = _day(params, "startDate", DEFAULT_START)
    end = _day(params, "endDate", today)
    if start is None or end is None or start > end:
        return envelope(BAD_REQUEST)
    unknown = config.known is not None and collection_hash not in config.known
    if unknown or not HASH_PATTERN.match(collection_hash):
        return envelope(INVALID_HASH)
    if collection_hash in config.deleted:
        return envelope(FORBIDDEN)
    page_stats = params.get("includePageStats", "").lower() == "true"
    data = expected_stats(collection_hash, start, end, config, page_stats=page_stats)
    return envelope(OK, data, success=f"{collection_hash}|{start.isoformat()}|{end.isoformat()}")


def _non_negative_int(text: str | None, default: int) -> int | None:
    if text is None:
        return default
    return int(text) if text.isdigit() else None


def _get_list(params: Mapping[str, str], config: SimulatorConfig) -> Answer:
    first = _non_negative_int(params.get("from"), 0)
    count = _non_negative_int(params.get("count"), DEFAULT_LIST_COUNT)
    status = params.get("collectionStatus")
    if first is None or count is None or (status is not None and status not in COLLECTION_STATUSES):
        return envelope(BAD_REQUEST)
    if config.list_ignores_from:  # a server that pages badly: always the first page
        first = 0
    query = params.get("query", "").lower()
    matching = [
        h
        for h in config.catalog
        if query in h.lower() and (status is None or status == CATALOG_STATUS)
    ]
    return envelope(OK, [_listing(h, config) for h in matching[first : first + count]])


def _listing(collection_hash: str, config: SimulatorConfig) -> dict[str, Any]:
    """One record of collection.getList."""
    return {
        "hash": collection_hash,
        "title": f"Flipbook {collection_hash}",
        "status": CATALOG_STATUS,
        "pages": pages_of(collection_hash, config),
    }


def fault(kind: str, config: SimulatorConfig, real: Callable[[], Answer]) -> Answer:
    """The answer for an injected fault; ``real`` gives the answer it distorts or delays."""
    if kind in _HTTP_FAULTS:
        status = _HTTP_FAULTS[kind]
        page = f"<html><body><h1>{status} Server Error</h1><p>upstream failed</p></body></html>"
        return Answer(status=status, body=page.encode(), content_type=HTML)
    if kind == "http429":
        headers = None if config.retry_after is None else {"Retry-After": f"{config.retry_after:g}"}
        return Answer(status=429, body=b"Too Many Requests", content_type=TEXT, headers=headers)
    if kind in _FAULT_CODES:
        return envelope(_FAULT_CODES[kind])
    if kind == "not_json":
        page = "<html><body><p>Service temporarily unavailable</p></body></html>"
        return Answer(body=page.encode(), content_type=HTML)
    if kind == "drop":
        return Answer(drop=True)
    if kind == "truncated":
        body = real().body
        # Half a body with a Content-Length to match: the exchange completes, the JSON does not.
        return Answer(body=body[: len(body) // 2])
    if kind == "slow":
        return replace(real(), stall=config.slow_seconds)
    if kind == "bad_payload":
        return _bad_payload(real())
    raise ValueError(f"unknown fault kind {kind!r}")


def _bad_payload(answer: Answer) -> Answer:
    """A code-20 envelope whose figures break the schema (a negative count); others unchanged."""
    if answer.code != OK:
        return answer
    body = json.loads(answer.body)
    if isinstance(body["data"], dict):
        body["data"]["downloads"] = -1
    # Not counted as a success: the client must refuse this answer.
    return Answer(body=json.dumps(body, separators=(",", ":")).encode(), code=OK)
