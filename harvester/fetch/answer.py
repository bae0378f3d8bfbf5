"""From an HTTP answer to the ``data`` of a code-20 envelope: read within a cap, decoded with
bounds, classified.

Every answer is held to the same limits, whatever the server sends:

- **size**: the body is read in chunks and dropped past ``api.max_answer_mib``, counted after
  decompression (aiohttp decompresses a bounded amount per chunk, so a gzip bomb never grows
  past the cap either);
- **depth**: an API answer is a few levels deep; one nested deeper than :data:`MAX_DEPTH` is
  refused before anything walks it recursively (the quarantine, the redaction);
- **duplicate keys**: orjson keeps the last of two equal keys silently. A compact answer
  (the API's) encodes back to the same bytes, which proves no key was dropped, for about half
  an orjson decode; any other body is decoded again by ``json``, whose object hook sees every
  key (several times slower, for answers that are not compact);
- **status**: only an HTTP 200 answer is data; the API's error codes count on any status.

A body that is not JSON is a transient :class:`~harvester.errors.BadResponse` (a proxy's page,
a cut answer); an answer refused for its size, depth, duplicates or any other decode failure is
an :class:`~harvester.errors.UnreadableAnswer`: its unit fails, its first bytes are quarantined.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson

from harvester.api import CODE_MEANINGS
from harvester.errors import (
    ApiBusy,
    ApiRejected,
    BadResponse,
    CredentialsRejected,
    HttpError,
    RateLimited,
    UnreadableAnswer,
)

__all__ = ["MAX_DEPTH", "classify", "decode", "read_body"]

# A getStats envelope is 4 levels deep, a getList one 4 or 5. This is orjson's bound when it
# encodes (tests/test_answers.py checks it), so an encodable value is never deeper.
MAX_DEPTH = 254
PREVIEW_BYTES = 1024  # what the quarantine keeps of an unreadable answer
TRANSIENT_CODES = {22: ApiBusy, 38: ApiBusy, 31: RateLimited, 32: RateLimited}
CREDENTIAL_CODES = frozenset({41, 44})


def _unreadable(reason: str, body: bytes) -> UnreadableAnswer:
    """The error for an answer refused whole; its first bytes go to the quarantine."""
    preview = body[:PREVIEW_BYTES].decode("utf-8", "replace")
    return UnreadableAnswer(reason, payload=preview)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


async def read_body(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The whole body, or UnreadableAnswer as soon as it grows past ``cap`` bytes (decoded)."""
    declared = response.content_length
    if declared is not None and declared > cap and "Content-Encoding" not in response.headers:
        response.close()  # not a byte of it read: the connection is not reused
        raise _unreadable(
            f"an answer of {_mib(declared)} (Content-Length), over the {_mib(cap)} cap"
            " (api.max_answer_mib)",
            b"",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > cap:
            response.close()
            raise _unreadable(
                f"an answer larger than the {_mib(cap)} cap (api.max_answer_mib), counted"
                " after decompression; the rest was not read",
                b"".join(chunks)[:PREVIEW_BYTES] or chunk[:PREVIEW_BYTES],
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _shape(value: Any) -> tuple[int, int]:
    """The number of keys in every object of ``value``, and its depth (the walk stops as
    soon as the depth passes MAX_DEPTH). Iterative: orjson decodes 1,024 levels, more than
    Python's recursion allows."""
    if type(value) is not dict and type(value) is not list:
        return 0, 0
    keys = depth = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > depth:
            depth = level
            if depth > MAX_DEPTH:
                break
        children = item.values() if type(item) is dict else item
        if type(item) is dict:
            keys += len(item)
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, level + 1))
    return keys, depth


class _Duplicate(ValueError):
    """Raised from json's object hook: a key appears twice in one object."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's ``object_pairs_hook``: the object, unless a key repeats."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return result


def _strict_json(status: int, body: bytes) -> Any:
    """``json``'s reading of a body: what orjson refuses (NaN, integers past 64 bits) stays a
    payload for the validator to name, duplicate keys are refused, too deep is refused."""
    try:
        value = json.loads(body, object_pairs_hook=_pairs)
    except _Duplicate as exc:
        raise _unreadable(f"duplicate key {str(exc)[:40]!r} in one object", body) from exc
    except RecursionError as exc:
        raise _unreadable(f"nested deeper than {MAX_DEPTH} levels", body) from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadResponse(
            f"HTTP {status} with a body that is not JSON ({len(body)} bytes)"
        ) from exc
    if _shape(value)[1] > MAX_DEPTH:
        raise _unreadable(f"nested deeper than {MAX_DEPTH} levels", body)
    return value


def decode(status: int, body: bytes) -> Any:
    """The JSON value of a body, within the depth bound and without duplicate keys."""
    try:
        value = orjson.loads(body)  # several times json's speed on fifty-page answers
        # A compact answer (the API's, the simulator's) encodes back to itself, and then no
        # key was dropped; orjson encodes MAX_DEPTH levels at most, so the depth holds too.
        if orjson.dumps(value) == body:
            return value
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    return _strict_json(status, body)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given in seconds (HTTP dates are rare here: ignored).

    No upper cap: a day or a year is what the server asked for, and the fetcher weighs it
    against the circuit breaker (a wait too long for the run ends it; ignoring it would not).
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None  # NaN fails the test too


def classify(status: int, body: bytes, retry_after: str | None) -> Any:
    """Turn an HTTP answer into the ``data`` of a code-20 envelope, or raise the matching error.

    The API's codes count on any HTTP status (its errors may come with a 4xx); success only
    with a 200: a code-20 body on a 404 or a redirect is someone else's answer.
    """
    if status == 429 or status >= 500:
        raise HttpError(f"HTTP {status}", status=status, retry_after=_retry_after(retry_after))
    envelope = decode(status, body)
    if not isinstance(envelope, dict) or type(envelope.get("code")) is not int:
        raise BadResponse(f"HTTP {status} with JSON that is not the API's envelope")
    code: int = envelope["code"]
    if code == 20:
        if status != 200:
            raise BadResponse(f"HTTP {status} with a code-20 body: only an HTTP 200 answer is data")
        return envelope.get("data")
    meaning = CODE_MEANINGS.get(code, "undocumented code")
    if code in CREDENTIAL_CODES:
        raise CredentialsRejected(code)
    if code in TRANSIENT_CODES:
        raise TRANSIENT_CODES[code](f"code {code}: {meaning}", code=code)
    raise ApiRejected(f"code {code}: {meaning}", code=code)
