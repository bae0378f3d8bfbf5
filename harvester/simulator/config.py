"""The simulator's settings: one mutable dataclass, validated on construction and replace.

:func:`config_from_mapping` turns JSON/YAML (``harvester simulate --config file``, the admin
endpoint ``POST /_sim/config``) into typed values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from harvester.api import DEFAULT_RATE_LIMITS
from harvester.model import RateLimit

FAULT_KINDS = frozenset(
    {
        "http500",
        "http502",
        "http503",
        "http429",
        "code22",
        "code38",
        "code31",
        "code32",
        "truncated",
        "not_json",
        "drop",
        "slow",
        "bad_payload",
    }
)
HASH_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ISO_DAY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DEMO_KEYS: Mapping[str, str] = {"demo-key": "demo-secret"}
DEMO_CATALOG = ("d3m0h45h", "x9y8z7", "f1ipb00k")
DEFAULT_MAX_PAGES = 24
DEFAULT_SLOW_SECONDS = 30.0


@dataclass
class SimulatorConfig:
    """Everything that shapes the simulator's answers; replace it with ``reconfigure``."""

    seed: int = 0
    keys: dict[str, str] = field(default_factory=lambda: dict(DEMO_KEYS))
    rate_limits: tuple[RateLimit, ...] = DEFAULT_RATE_LIMITS
    enforce_limits: bool = True
    latency: tuple[float, float] = (0.0, 0.0)
    faults: dict[str, float] = field(default_factory=dict)
    retry_after: float | None = None
    slow_seconds: float = DEFAULT_SLOW_SECONDS
    known: frozenset[str] | None = None
    deleted: frozenset[str] = frozenset()
    pages: dict[str, int] = field(default_factory=dict)
    max_pages: int = DEFAULT_MAX_PAGES
    revisions: dict[str, int] = field(default_factory=dict)
    catalog: tuple[str, ...] = DEMO_CATALOG
    list_ignores_from: bool = False  # getList answers the first page whatever `from` says
    # A window in which nobody opened the flipbook answers `pages: []` (as an unopened
    # flipbook's may), not a row of zeros per page.
    quiet_without_pages: bool = False

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            problem = check(getattr(self, name))
            if problem:
                raise ValueError(f"simulator config field {name!r}: {problem}")


# --- checks on typed values (run by __post_init__, so also by dataclasses.replace) -----------


def _check_rate_limits(value: tuple[RateLimit, ...]) -> str | None:
    for limit in value:
        if limit.calls < 1 or limit.seconds <= 0:
            return f"every window needs calls >= 1 and seconds > 0, got {limit}"
    return None


def _check_latency(value: tuple[float, float]) -> str | None:
    low, high = value
    return None if 0 <= low <= high else f"expected 0 <= min <= max, got {value}"


def _check_faults(value: dict[str, float]) -> str | None:
    unknown = sorted(set(value) - FAULT_KINDS)
    if unknown:
        return f"unknown fault kind(s) {unknown}; known: {sorted(FAULT_KINDS)}"
    if any(not 0 <= p <= 1 for p in value.values()):
        return "every probability must be within 0..1"
    # At most one fault per request: the probabilities share one draw.
    if sum(value.values()) > 1 + 1e-9:
        return "the probabilities must add up to at most 1"
    return None


def _check_non_negative(value: float | None) -> str | None:
    return None if value is None or value >= 0 else f"expected >= 0, got {value}"


def _check_pages(value: dict[str, int]) -> str | None:
    bad = sorted(h for h, n in value.items() if n < 0)
    return f"page counts must be >= 0 (bad: {bad})" if bad else None


def _check_max_pages(value: int) -> str | None:
    return None if value >= 1 else f"expected >= 1, got {value}"


def _check_bool(value: bool) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def _check_revisions(value: dict[str, int]) -> str | None:
    bad = sorted(day for day in value if not _is_iso_day(day))
    return f"keys must be YYYY-MM-DD days (bad: {bad})" if bad else None


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "rate_limits": _check_rate_limits,
    "latency": _check_latency,
    "faults": _check_faults,
    "retry_after": _check_non_negative,
    "slow_seconds": _check_non_negative,
    "pages": _check_pages,
    "max_pages": _check_max_pages,
    "revisions": _check_revisions,
    "list_ignores_from": _check_bool,
    "quiet_without_pages": _check_bool,
}


def _is_iso_day(text: str) -> bool:
    """True for a real calendar day written exactly as YYYY-MM-DD."""
    if not ISO_DAY_PATTERN.match(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


# --- JSON/YAML values → typed values ----------------------------------------------------------


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _optional_number(value: Any) -> float | None:
    return None if value is None else _number(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _mapping(value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return value


def _sequence(value: Any) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return list(value)


def _str_to_str(value: Any) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in _mapping(value).items()}


def _str_to_int(value: Any) -> dict[str, int]:
    return {_str(k): _int(v) for k, v in _mapping(value).items()}


def _str_to_number(value: Any) -> dict[str, float]:
    return {_str(k): _number(v) for k, v in _mapping(value).items()}


def _str_set(value: Any) -> frozenset[str]:
    return frozenset(_str(item) for item in _sequence(value))


def _optional_str_set(value: Any) -> frozenset[str] | None:
    return None if value is None else _str_set(value)


def _str_tuple(value: Any) -> tuple[str, ...]:
    return tuple(_str(item) for item in _sequence(value))


def _latency(value: Any) -> tuple[float, float]:
    if not isinstance(value, list | tuple):
        fixed = _number(value)  # one number: the same latency every time
        return (fixed, fixed)
    if len(value) != 2:
        raise ValueError(f"expected [min, max] seconds, got {len(value)} items")
    return (_number(value[0]), _number(value[1]))


def _rate_limit(value: Any) -> RateLimit:
    if isinstance(value, RateLimit):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"calls", "seconds"})
        if unknown or "calls" not in value or "seconds" not in value:
            raise ValueError("each window is {calls: int, seconds: number}")
        return RateLimit(_int(value["calls"]), _number(value["seconds"]))
    items = _sequence(value)
    if len(items) != 2:
        raise ValueError("each window is {calls: int, seconds: number} or [calls, seconds]")
    return RateLimit(_int(items[0]), _number(items[1]))


def _rate_limits(value: Any) -> tuple[RateLimit, ...]:
    return tuple(_rate_limit(item) for item in _sequence(value))


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "seed": _int,
    "keys": _str_to_str,
    "rate_limits": _rate_limits,
    "enforce_limits": _bool,
    "latency": _latency,
    "faults": _str_to_number,
    "retry_after": _optional_number,
    "slow_seconds": _number,
    "known": _optional_str_set,
    "deleted": _str_set,
    "pages": _str_to_int,
    "max_pages": _int,
    "revisions": _str_to_int,
    "catalog": _str_tuple,
    "list_ignores_from": _bool,
    "quiet_without_pages": _bool,
}


def changes_from_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """Typed field values from a partial JSON/YAML mapping; ValueError names the bad field."""
    changes: dict[str, Any] = {}
    for name, value in _mapping(data).items():
        convert = _CONVERTERS.get(name)
        if convert is None:
            raise ValueError(
                f"unknown simulator config field {name!r}; known: {sorted(_CONVERTERS)}"
            )
        try:
            changes[name] = convert(value)
        except ValueError as error:
            raise ValueError(f"simulator config field {name!r}: {error}") from None
    return changes


def config_from_mapping(data: Mapping[str, Any]) -> SimulatorConfig:
    """A validated config from JSON/YAML; absent fields keep their defaults."""
    return SimulatorConfig(**changes_from_mapping(data))


def to_jsonable(name: str, value: Any) -> Any:
    """One field's typed value as JSON (sets and tuples become lists, windows become maps)."""
    if name == "rate_limits":
        return [{"calls": r.calls, "seconds": r.seconds} for r in _rate_limits(value)]
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value
