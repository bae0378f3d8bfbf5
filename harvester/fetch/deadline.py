"""One deadline per attempt: connect, headers and the whole body, counted from admission.

The client opens :func:`attempt_deadline` around a request and the reading of its body; the
paced session calls :func:`admitted` once the pacer lets the request go, and the deadline
starts then. The wait for a slot never counts (a minute window may hold a request back for
most of a minute), and nothing after it escapes: a server that trickles its body a byte a
second ends the attempt with a timeout like one that never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator

__all__ = ["admitted", "attempt_deadline"]

# The deadline of the attempt this task is making, and its length. A context variable: the
# session's middleware runs inside the client's own await chain, so it sees the attempt of
# its request whichever other requests are in flight.
_ATTEMPT: contextvars.ContextVar[tuple[asyncio.Timeout, float] | None] = contextvars.ContextVar(
    "attempt", default=None
)


@contextlib.asynccontextmanager
async def attempt_deadline(seconds: float) -> AsyncIterator[None]:
    """Raise TimeoutError when what runs inside lasts ``seconds`` past its request's admission
    (no deadline at all until the request is admitted)."""
    async with asyncio.timeout(None) as timeout:
        token = _ATTEMPT.set((timeout, seconds))
        try:
            yield
        finally:
            _ATTEMPT.reset(token)


def admitted() -> None:
    """This task's request was admitted by the pacer: its attempt has ``seconds`` from now.

    aiohttp re-sends a request once when a reused connection drops before the answer; the
    re-send waits for a slot of its own and gets the whole deadline again.
    """
    attempt = _ATTEMPT.get()
    if attempt is not None:
        timeout, seconds = attempt
        timeout.reschedule(asyncio.get_running_loop().time() + seconds)
