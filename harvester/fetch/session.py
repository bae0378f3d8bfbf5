"""The paced session: every request on the wire holds a place in the key's budget.

:func:`make_session` builds the one aiohttp session of an account: a middleware reserves a slot
of the pacer for every send (aiohttp's own re-sends included), a trace stamps it when the
request's headers go out on an open connection, after any TCP and TLS set-up, and a send that
never happened frees it (see :mod:`harvester.pacing.limiter`).
"""

from __future__ import annotations

import asyncio
import contextvars
from types import SimpleNamespace

import aiohttp
from aiohttp import ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType

from harvester.fetch.deadline import admitted
from harvester.pacing.protocol import Pacer, Ticket

__all__ = ["make_session", "paced", "sent_trace"]

# --- pacing at the wire ---------------------------------------------------------------------

# The slot of the request this task is sending. The middleware sets it around the handler; the
# trace signal fires inside that same await chain (ClientRequest.send → write_headers), so it
# reads the slot of its own request, whichever other requests are in flight.
_SENDING: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("sending", default=None)

KEEPALIVE_SLACK_SECONDS = 5.0  # past the longest window: a burst after a full wait reuses
MIN_KEEPALIVE_SECONDS = 15.0  # aiohttp's own default; limits off need no longer


def paced(limiter: Pacer, timeout_seconds: float) -> ClientMiddlewareType:
    """A client middleware: every request on the wire waits for a slot of the limiter, then has
    ``timeout_seconds`` to get its answer's headers. Use it with :func:`sent_trace` (or
    :func:`make_session`, which wires both): the trace stamps the slot when the request goes out.

    A middleware, not a call before ``session.get``: aiohttp silently sends an idempotent
    request a second time when a reused connection drops, calling the middleware again, and
    that send must count too. A request that never went out (refused, timed out or cancelled
    before its headers were written) frees its slot. The timeout starts after the limiter
    admits the request (a session-wide ``total`` timeout would also count the wait for a
    slot); the client's attempt deadline (:mod:`harvester.fetch.deadline`) starts at the
    same moment and bounds the body too.
    """

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        slot = await limiter.reserve()
        admitted()  # the client's deadline for the attempt (body included) starts now
        token = _SENDING.set(slot)
        try:
            async with asyncio.timeout(timeout_seconds):
                response = await handler(request)
            await slot.astamp()  # a no-op after the trace's; without the trace, an answer came
        finally:
            _SENDING.reset(token)
            await slot.afree()  # does nothing when the trace stamped it: the request went out
        return response

    return middleware


async def _on_headers_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    """The request's headers are being written to an open connection: stamp its slot."""
    slot = _SENDING.get()
    if slot is not None:
        await slot.astamp()  # a shared budget records it before the headers leave


def sent_trace() -> aiohttp.TraceConfig:
    """A trace config that stamps a :func:`paced` request's slot when its headers go out.

    aiohttp fires ``on_request_headers_sent`` once per send, after the connection (TCP and TLS)
    is up, just before the headers reach the socket; a re-send on a new connection fires it
    again, for the new slot.
    """
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    return trace


def make_session(
    limiter: Pacer,
    *,
    timeout_seconds: float,
    concurrency: int,
    keepalive_seconds: float | None = None,
) -> aiohttp.ClientSession:
    """One pooled session: every send paced and counted from when it goes out, each request
    timed from its admission, connections kept alive past the longest window.

    A connection idle for a whole window (the minute window leaves long gaps) would otherwise
    close, and the next burst pay a handshake for it. ``keepalive_seconds`` defaults to the
    longest window plus a few seconds; the server may still close sooner.
    """
    if keepalive_seconds is None:
        keepalive_seconds = max(
            MIN_KEEPALIVE_SECONDS, limiter.longest_window + KEEPALIVE_SLACK_SECONDS
        )
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_seconds, sock_read=timeout_seconds
        ),
        connector=aiohttp.TCPConnector(
            limit=concurrency,
            limit_per_host=concurrency,
            keepalive_timeout=keepalive_seconds,
        ),
        middlewares=[paced(limiter, timeout_seconds)],
        trace_configs=[sent_trace()],
    )
