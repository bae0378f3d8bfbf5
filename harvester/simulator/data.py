"""The simulator's statistics: a pure, deterministic function of the config, hash and day.

Every figure comes from a BLAKE2b digest of (seed, hash, day, revision[, page]), so the server
and the tests (:func:`expected_stats`) agree exactly without sharing state. A window's figures
are the sums of its days' figures, page by page.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import date
from functools import lru_cache
from hashlib import blake2b
from typing import Any

from harvester.simulator.config import SimulatorConfig

QUIET_PERCENT = 10  # share of (hash, day) pairs with no traffic at all
MAX_IMPRESSIONS = 500
MAX_VIEWS = 800
MAX_TIME_SPENT = 5000
MAX_DOWNLOADS = 20
MAX_PAGE_VIEWS = 300
MAX_PAGE_CLICKS = 50
MAX_PAGE_TIME_SPENT = 3000

_FIVE = struct.Struct("<5I")
_THREE = struct.Struct("<3I")
_QUIET_ROW = (False, 0, 0, 0, 0)

__all__ = ["day_stats", "expected_stats", "pages_of"]


def _digest(text: str, size: int) -> bytes:
    """``size`` well-mixed bytes for ``text``."""
    return blake2b(text.encode(), digest_size=size).digest()


@lru_cache(maxsize=1 << 12)
def _default_pages(seed: int, collection_hash: str, max_pages: int) -> int:
    value = int.from_bytes(_digest(f"{seed}|pages|{collection_hash}", 4), "little")
    return 1 + value % max_pages


def pages_of(collection_hash: str, config: SimulatorConfig) -> int:
    """How many pages the collection has: the config's override, else 1..max_pages."""
    override = config.pages.get(collection_hash)
    if override is not None:
        return override
    return _default_pages(config.seed, collection_hash, config.max_pages)


@lru_cache(maxsize=1 << 16)
def _collection_row(
    seed: int, collection_hash: str, ordinal: int, revision: int
) -> tuple[bool, int, int, int, int]:
    """(active, impressions, views, time_spent, downloads) for one day."""
    quiet, a, b, c, d = _FIVE.unpack(_digest(f"{seed}|{collection_hash}|{ordinal}|{revision}", 20))
    # A revised day always has traffic, so a revision is always visible in the figures.
    if revision == 0 and quiet % 100 < QUIET_PERCENT:
        return _QUIET_ROW
    return (
        True,
        a % (MAX_IMPRESSIONS + 1),
        b % (MAX_VIEWS + 1),
        c % (MAX_TIME_SPENT + 1),
        d % (MAX_DOWNLOADS + 1),
    )


@lru_cache(maxsize=1 << 12)
def _page_rows(
    seed: int, collection_hash: str, ordinal: int, revision: int, pages: int
) -> tuple[int, ...]:
    """(views, clicks, time_spent) of pages 1..pages for one day, flattened."""
    if not _collection_row(seed, collection_hash, ordinal, revision)[0]:
        return (0,) * (3 * pages)
    prefix = f"{seed}|{collection_hash}|{ordinal}|{revision}|p"
    flat: list[int] = []
    for page in range(1, pages + 1):
        a, b, c = _THREE.unpack(_digest(f"{prefix}{page}", 12))
        views = a % (MAX_PAGE_VIEWS + 1)
        # Nobody clicks a page nobody viewed: clicks never exceed views.
        flat += (views, b % (min(views, MAX_PAGE_CLICKS) + 1), c % (MAX_PAGE_TIME_SPENT + 1))
    return tuple(flat)


def _revision(config: SimulatorConfig, day: date) -> int:
    return config.revisions.get(day.isoformat(), 0) if config.revisions else 0


def _triples(flat: list[int]) -> zip[tuple[int, int, int]]:
    """(views, clicks, time_spent) per page from the flattened figures."""
    it = iter(flat)
    return zip(it, it, it, strict=False)


def _payload(totals: Sequence[int], pages: list[int] | None) -> dict[str, Any]:
    """The ``data`` object: collection figures, then ``pages`` when asked for."""
    data: dict[str, Any] = {
        "impressions": totals[0],
        "views": totals[1],
        "time_spent": totals[2],
        "downloads": totals[3],
    }
    if pages is not None:
        data["pages"] = [
            {"page": n, "views": views, "clicks": clicks, "time_spent": time_spent}
            for n, (views, clicks, time_spent) in enumerate(_triples(pages), start=1)
        ]
    return data


def day_stats(
    collection_hash: str, day: date, config: SimulatorConfig, *, page_stats: bool
) -> dict[str, Any]:
    """The ``data`` payload for one day."""
    key = (config.seed, collection_hash, day.toordinal(), _revision(config, day))
    active, *totals = _collection_row(*key)
    pages = list(_page_rows(*key, pages_of(collection_hash, config))) if page_stats else None
    if pages is not None and config.quiet_without_pages and not active:
        pages = []
    return _payload(totals, pages)


def expected_stats(
    collection_hash: str,
    start: date,
    end: date,
    config: SimulatorConfig,
    *,
    page_stats: bool = True,
) -> dict[str, Any]:
    """The exact ``data`` answered for the inclusive window: each figure summed over its days."""
    if start > end:
        raise ValueError(f"start {start} is after end {end}")
    revisions = {date.fromisoformat(day).toordinal(): rev for day, rev in config.revisions.items()}
    keys = [
        (config.seed, collection_hash, ordinal, revisions.get(ordinal, 0))
        for ordinal in range(start.toordinal(), end.toordinal() + 1)
    ]
    days = [_collection_row(*key) for key in keys]
    totals = [sum(column) for column in zip(*(day[1:] for day in days), strict=True)]
    pages: list[int] | None = None
    if page_stats:
        count = pages_of(collection_hash, config)
        rows = (_page_rows(*key, count) for key in keys)
        pages = [sum(column) for column in zip(*rows, strict=True)] if count else []
        if config.quiet_without_pages and not any(day[0] for day in days):
            pages = []  # nobody opened it in the whole window
    return _payload(totals, pages)
