"""What the paced session talks to: the :class:`Pacer` protocol, its tickets, and the store
protocol behind a shared budget; a budget's identity (its digest) and its folder on this host.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from harvester.model import RateLimit
from harvester.pacing.limiter import HoldMeter, WindowUse, window_margin

__all__ = [
    "BUDGET_DIR_ENV",
    "Admission",
    "BudgetStore",
    "Clock",
    "Pacer",
    "Sleep",
    "Ticket",
    "budget_digest",
    "budget_dir",
    "windows_of",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# A store's answer to a reservation: the lease's id, or (seconds to wait, whether that wait is
# exact: no lease anywhere could make room sooner).
Admission = str | tuple[float, bool]

BUDGET_DIR_ENV = "HARVESTER_BUDGET_DIR"
POLL_SECONDS = 0.02  # the longest sleep while another process's unsent call may resolve
LEASE_SLACK_SECONDS = 5.0  # past the request timeout, before an unsent lease lapses


class Ticket(Protocol):
    """One admitted call's place: stamp it when sent, free it if never sent (idempotent)."""

    async def astamp(self) -> None:
        """The request is going out now: its start enters every window."""

    async def afree(self) -> None:
        """The request never went out: give its place back (no-op once stamped)."""


class Pacer(Protocol):
    """What the paced session, the fetcher and the report need of a key's rate budget."""

    calls: int
    waits: int
    waited_seconds: float
    pauses: int
    hold_meter: HoldMeter

    @property
    def held_seconds(self) -> float:
        """Wall-clock time during which at least one call was held back, so far."""

    @property
    def waiting(self) -> int:
        """Calls asking for a place or holding one unsent."""

    def window_use(self) -> tuple[WindowUse, ...]:
        """Each window's size and the send times of this process's calls still inside it."""

    @property
    def enabled(self) -> bool:
        """False when no window is configured."""

    @property
    def longest_window(self) -> float:
        """The longest configured window in seconds."""

    async def reserve(self) -> Ticket:
        """Wait until a call fits every window; its ticket holds a place until resolved."""

    def admits_at(self) -> float:
        """When a call asking now would be admitted, as far as this process knows."""

    def pause(self, seconds: float) -> bool:
        """Hold every call on the key back for ``seconds``; True when the pause is news."""

    def window_for_code(self, code: int | None) -> float:
        """The window a 31 (shortest) or 32 (longest) answer says was exceeded."""

    async def aclose(self) -> None:
        """Release the store (a no-op in process)."""


class BudgetStore(Protocol):
    """The shared record of a key's calls; every method is atomic across processes."""

    async def reserve(self) -> Admission:
        """Lease a place if a call fits every window now; else say how long to wait."""

    async def stamp(self, lease: str) -> None:
        """The leased call is being sent: record its start, drop its lease."""

    async def free(self, lease: str) -> None:
        """The leased call was never sent: drop its lease."""

    async def pause(self, seconds: float) -> None:
        """Admit nothing on the key for ``seconds`` from now (extends, never shortens)."""

    async def close(self) -> None:
        """Release connections."""


def budget_digest(base_url: str, key: str) -> str:
    """The name of a key's budget: a hash of the API and the key, from which neither shows."""
    return hashlib.sha256(f"{base_url}\0{key}".encode()).hexdigest()[:32]


def budget_dir(env: dict[str, str] | None = None) -> Path:
    """Where a host's budget files live: ``$HARVESTER_BUDGET_DIR``, the runtime directory
    (memory-backed, private to the user), or the user's cache directory."""
    env = dict(os.environ) if env is None else env
    if env.get(BUDGET_DIR_ENV):
        return Path(env[BUDGET_DIR_ENV]).expanduser()
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "harvester" / "budget"
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "harvester" / "budget"


def windows_of(limits: Sequence[RateLimit]) -> list[tuple[int, float]]:
    """(calls, seconds with the limiter's margin) for every window: what stores enforce."""
    return [(limit.calls, limit.seconds + window_margin(limit.seconds)) for limit in limits]
