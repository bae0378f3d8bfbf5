"""What the simulator remembers between requests: counters, rate windows, seeded randomness."""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harvester.model import RateLimit

CODE_PER_SECOND = 31
CODE_PER_MINUTE = 32


@dataclass
class Counters:
    """What the simulator saw and answered; :meth:`snapshot` is JSON-able."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    http_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    rate_limit_violations: int = 0
    bad_signatures: int = 0
    successes: Counter[str] = field(default_factory=Counter)

    def enter(self) -> None:
        """A request arrived."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        """A request was answered (or dropped, or abandoned by its client)."""
        self.in_flight -= 1

    def fresh(self) -> Counters:
        """Zeroed counters that still know the requests being handled right now."""
        return Counters(in_flight=self.in_flight, max_in_flight=self.in_flight)

    def snapshot(self) -> dict[str, Any]:
        """A copy with string keys, safe to serialise and to keep."""
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "codes": {str(k): v for k, v in sorted(self.codes.items())},
            "http_status": {str(k): v for k, v in sorted(self.http_status.items())},
            "faults": dict(sorted(self.faults.items())),
            "rate_limit_violations": self.rate_limit_violations,
            "bad_signatures": self.bad_signatures,
            "successes": dict(self.successes),
        }


class RateWindows:
    """Sliding windows of request times per API key, as the real API counts them."""

    def __init__(self) -> None:
        self._times: dict[str, list[float]] = {}

    def admit(self, key: str, now: float, limits: Sequence[RateLimit]) -> int | None:
        """Record a request; return 31/32 when a window already held its ``calls``, else None.

        A rejected request still counts: a client that keeps hammering stays limited.
        """
        times = self._times.setdefault(key, [])
        exceeded = [
            limit.seconds
            for limit in limits
            if len(times) - bisect.bisect_right(times, now - limit.seconds) >= limit.calls
        ]
        times.append(now)
        self._forget(times, now, limits)
        if not exceeded:
            return None
        shortest = min(limit.seconds for limit in limits)
        return CODE_PER_SECOND if min(exceeded) == shortest else CODE_PER_MINUTE

    @staticmethod
    def _forget(times: list[float], now: float, limits: Sequence[RateLimit]) -> None:
        """Drop times older than the longest window; in batches, so appends stay cheap."""
        horizon = now - max((limit.seconds for limit in limits), default=0.0)
        if times[0] <= horizon:
            stale = bisect.bisect_right(times, horizon)
            if stale * 2 >= len(times) or stale > 1024:
                del times[:stale]


class Randomness:
    """The seeded draws: which fault (if any) and how much latency, each its own stream."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._faults = random.Random(f"faults:{seed}")
        self._latency = random.Random(f"latency:{seed}")

    def fault(self, probabilities: dict[str, float]) -> str | None:
        """At most one fault kind for this request, or None."""
        if not probabilities:
            return None
        draw = self._faults.random()
        total = 0.0
        for kind in sorted(probabilities):  # sorted: the same seed picks the same kinds
            total += probabilities[kind]
            if draw < total:
                return kind
        return None

    def latency(self, bounds: tuple[float, float]) -> float:
        """Seconds to wait before answering, uniform within ``bounds``."""
        low, high = bounds
        return low if high <= low else self._latency.uniform(low, high)
