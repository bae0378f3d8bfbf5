"""Signing, one request, response parsing and classification.

This is the one place where aiohttp, asyncio and JSON exceptions become the harvester's own
(:mod:`harvester.errors`), raised ``from`` the original. Messages name codes and reasons, never
URLs: the query string carries the API key and the signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

from harvester.plan import Unit

GET_STATS = "collection.getStats"
GET_LIST = "collection.getList"


def sign(params: Mapping[str, str], secret: str) -> str:
    """Lowercase hex MD5 of the secret followed by every ``name+value``, sorted by name.

    ``signature`` (and ``file``, for uploads) never take part.
    """
    parts = [secret]
    for name in sorted(params):
        if name not in ("signature", "file"):
            parts.append(name)
            parts.append(params[name])
    return hashlib.md5("".join(parts).encode("utf-8")).hexdigest()


class Fetched(NamedTuple):
    """One unit's validated answer, ready to be staged and written."""

    unit: Unit
    fetched_at: datetime  # timezone-aware, UTC
    impressions: int
    views: int
    time_spent: int
    downloads: int
    pages: tuple[tuple[int, int, int, int], ...]  # (page, views, clicks, time_spent) by page
