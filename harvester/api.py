"""The Flipsnack API as this harvester knows it: its methods, how a request is signed, what
its answer codes mean, where it lives and the limits it enforces by default.

Facts about the vendor's protocol, in one place: the client (:mod:`harvester.fetch.client`)
and the bundled simulator (:mod:`harvester.simulator`) both read them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from harvester.model import RateLimit

__all__ = [
    "CODE_MEANINGS",
    "DEFAULT_BASE_URL",
    "DEFAULT_RATE_LIMITS",
    "GET_LIST",
    "GET_STATS",
    "SIMULATOR_ENDPOINT",
    "canonical_endpoint",
    "sign",
]

DEFAULT_BASE_URL = "https://api.flipsnack.com/v1/"
# The documented limits of one key: every window holds at once.
DEFAULT_RATE_LIMITS = (RateLimit(5, 1.0), RateLimit(60, 60.0))

GET_STATS = "collection.getStats"
GET_LIST = "collection.getList"

SIMULATOR_ENDPOINT = "simulator"  # the bundled simulator, started in-process on any port
_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_endpoint(base_url: str) -> str:
    """One spelling per API endpoint: scheme and host lower-cased, the scheme's default port
    dropped, the path ending in one ``/`` (``HTTPS://API.flipsnack.com:443/v1`` is
    ``https://api.flipsnack.com/v1/``); the bundled simulator is ``simulator``.

    Two base URLs that reach the same API spell it the same, so the output's record (and the
    key's budget) cannot tell them apart.
    """
    if base_url == SIMULATOR_ENDPOINT:
        return SIMULATOR_ENDPOINT
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    path = parts.path.rstrip("/") + "/"
    return urlunsplit((scheme, netloc, path, parts.query, ""))


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
