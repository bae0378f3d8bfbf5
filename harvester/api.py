"""The Flipsnack API as this harvester knows it: its methods, how a request is signed, what
its answer codes mean, where it lives and the limits it enforces by default.

Facts about the vendor's protocol, in one place: the client (:mod:`harvester.fetch.client`)
and the bundled simulator (:mod:`harvester.simulator`) both read them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from harvester.model import RateLimit

__all__ = [
    "CODE_MEANINGS",
    "DEFAULT_BASE_URL",
    "DEFAULT_RATE_LIMITS",
    "GET_LIST",
    "GET_STATS",
    "sign",
]

DEFAULT_BASE_URL = "https://api.flipsnack.com/v1/"
# The documented limits of one key: every window holds at once.
DEFAULT_RATE_LIMITS = (RateLimit(5, 1.0), RateLimit(60, 60.0))

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


CODE_MEANINGS = {
    22: "maintenance mode",
    30: "missing mandatory parameter",
    31: "requests per second limit exceeded",
    32: "requests per minute limit exceeded",
    38: "collection is in processing state",
    40: "bad request",
    42: "invalid action",
    43: "forbidden (collection deleted or owned by another user)",
    46: "invalid collection hash",
}
