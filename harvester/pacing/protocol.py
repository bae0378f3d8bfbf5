"""What the paced session talks to: the :class:`Pacer` protocol, its tickets, and the store
protocol behind a shared budget; a budget's identity (its digest) and its folder on this host.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from harvester.api import canonical_endpoint
from harvester.layout import BUDGET_DIR_PARTS
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
    "WindowUse",
    "budget_digest",
    "budget_dir",
    "windows_of",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# A store's answer to a reservation: the lease's id, or (seconds to wait, whether that wait is
# exact: no call anywhere could make room sooner by ending or giving its place back).
Admission = str | tuple[float, bool]

BUDGET_DIR_ENV = "HARVESTER_BUDGET_DIR"
POLL_SECONDS = 0.02  # the longest sleep while another process's call may give its place back
LEASE_SLACK_SECONDS = 2.0  # past the request timeout, before a lease lapses (its process died)


class Ticket(Protocol):
    """One admitted call's place: held from admission until its attempt ends."""

    def mark_sent(self) -> None:
        """The request's headers are going out now: its end will count in every window."""

    def end(self, answered: bool = True) -> None:
        """The attempt is over (idempotent): a sent call counts from now, an unsent one gives
        its place back. ``answered=False``: it went out but no answer came (it counts a little
        longer). A shared budget writes this in the background."""


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
        """Calls asking for a place or holding one (not ended yet)."""

    @property
    def enabled(self) -> bool:
        """False when no window is configured."""

    @property
    def longest_window(self) -> float:
        """The longest configured window in seconds."""

    async def reserve(self) -> Ticket:
        """Wait until a call fits every window; its ticket holds a place until it ends."""

    def admits_at(self) -> float:
        """When a call asking now would be admitted, as far as this process knows."""

    def window_use(self) -> list[WindowUse]:
        """Per window, this process's calls that hold a place in it now (read-only)."""

    def pause(self, seconds: float) -> bool:
        """Hold every call on the key back for ``seconds``; True when the pause is news."""

    def window_for_code(self, code: int | None) -> float:
        """The window a 31 (shortest) or 32 (longest) answer says was exceeded."""

    async def aclose(self) -> None:
        """Let pending writes land and release the store (a no-op in process)."""


class BudgetStore(Protocol):
    """The shared record of a key's calls; every method is atomic across processes."""

    async def reserve(self) -> Admission:
        """Lease a place if a call fits every window now; else say how long to wait."""

    async def end(self, lease: str, grace: float = 0.0) -> None:
        """The leased call went out and its attempt is over: count it from now (plus
        ``grace``) in every window, drop its lease."""

    async def free(self, lease: str) -> None:
        """The leased call was never sent: drop its lease."""

    async def pause(self, seconds: float) -> None:
        """Admit nothing on the key for ``seconds`` from now (extends, never shortens)."""

    async def close(self) -> None:
        """Release connections."""


def budget_digest(base_url: str, key: str) -> str:
    """The name of a key's budget: a hash of the canonical API endpoint and the key, from
    which neither shows. Spellings of one endpoint (``…/v1`` and ``…/V1/``… of the host's
    case, a default port) name one budget."""
    identity = f"{canonical_endpoint(base_url)}\0{key}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _home() -> Path:
    """The user's home from the password database (cron, sudo and services may set ``HOME``
    otherwise); ``$HOME`` only where there is no entry for the user."""
    try:
        import pwd

        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        return Path.home()


def budget_dir(env: dict[str, str] | None = None) -> Path:
    """Where a host's budget files live: ``$HARVESTER_BUDGET_DIR``, else
    ``~/.cache/harvester/budget`` under the user's home as the password database has it.

    One folder for every process of the user, whatever their environment: nothing here reads
    ``XDG_RUNTIME_DIR``, ``XDG_CACHE_HOME`` or ``HOME``, which a cron job, a login shell and
    a service set differently. Processes of several users share a budget through one
    ``HARVESTER_BUDGET_DIR`` they can all write.
    """
    env = dict(os.environ) if env is None else env
    if env.get(BUDGET_DIR_ENV):
        return Path(env[BUDGET_DIR_ENV]).expanduser()
    return _home().joinpath(*BUDGET_DIR_PARTS)


def windows_of(limits: Sequence[RateLimit]) -> list[tuple[int, float]]:
    """(calls, seconds with the limiter's margin) for every window: what stores enforce."""
    return [(limit.calls, limit.seconds + window_margin(limit.seconds)) for limit in limits]
