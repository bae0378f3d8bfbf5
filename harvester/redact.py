"""The last line of defence for secrets: scrub the API key, the secret and signatures from text.

Errors are built from units and codes, never from URLs, so nothing should need scrubbing; but
foreign exceptions (aiohttp prints the full URL with its query string) reach logs, tracebacks
and reports, and those all pass through :func:`redact` on the way out. Data bound for JSON goes
through :func:`redact_data` *before* it is encoded: encoding escapes a quote, a backslash or a
non-ASCII letter, and a secret escaped so no longer matches itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "forget_secrets", "redact", "redact_data", "register_secrets"]

REDACTED = "***"
MIN_SECRET_LENGTH = 4  # shorter "secrets" would scrub ordinary words; the API's are far longer

# Query parameters that carry credentials, however the URL got into the text.
_QUERY_SECRET = re.compile(r"(?i)\b(apiKey|signature)(=|%3D|': '|\": \"|: )([^&\s'\"<>,)\\]+)")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secrets(values: Iterable[str]) -> None:
    """Remember values that must never be printed or written (longest first)."""
    global _secrets
    with _lock:
        merged = set(_secrets) | {v for v in values if len(v) >= MIN_SECRET_LENGTH}
        _secrets = tuple(sorted(merged, key=len, reverse=True))


def forget_secrets() -> None:
    """Drop every registered value (tests)."""
    global _secrets
    with _lock:
        _secrets = ()


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and every credential parameter masked."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def redact_data(value: Any) -> Any:
    """``value`` with every string in it redacted, mapping keys included; call before encoding.

    Mappings become dicts, lists and tuples keep their kind; other values are returned as they
    are (a ``default=`` hook that turns them into text should redact that text too).
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {(redact(k) if isinstance(k, str) else k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact_data(item) for item in value)
    return value
