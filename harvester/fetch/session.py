"""The paced session: every request on the wire holds a place in the key's budget.

:func:`make_session` builds the one aiohttp session of an account: a middleware reserves a
ticket of the pacer for every send (aiohttp's own re-sends included) and holds it until the
attempt ends: the answer's body was read or the response released or closed, or the send
failed. A trace marks the ticket sent when the request's headers go out on an open connection,
after any TCP and TLS set-up; an attempt that ends unsent gives its place back. That interval,
admission to end, is what the pacing rule of :mod:`harvester.pacing.limiter` needs: the server
counts the call somewhere inside it.
"""

from __future__ import annotations

import asyncio
import contextvars
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType

from harvester.fetch.deadline import admitted
from harvester.pacing.protocol import Pacer, Ticket

__all__ = ["PacedResponse", "make_session", "paced", "sent_trace"]

# --- pacing at the wire ---------------------------------------------------------------------

# The ticket of the request this task is sending. The middleware sets it around the handler; the
# trace signal fires inside that same await chain (ClientRequest.send → write_headers), so it
# reads the ticket of its own request, whichever other requests are in flight.
_SENDING: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("sending", default=None)

KEEPALIVE_SLACK_SECONDS = 5.0  # past the longest window: a burst after a full wait reuses
MIN_KEEPALIVE_SECONDS = 15.0  # aiohttp's own default; limits off need no longer


class PacedResponse(ClientResponse):
    """A response that ends its call's ticket when released or closed: the attempt is over.

    ``async with session.get(...)`` releases it on the way out, a failed read closes it; the
    answer has arrived by then, so the call counts from there (see :func:`paced`).
    """

    _ticket: Ticket | None = None

    def hold(self, ticket: Ticket) -> None:
        """Keep ``ticket`` until this response is released or closed."""
        self._ticket = ticket

    def _end_ticket(self) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.end()

    def release(self) -> Any:
        """Release the connection, then end the attempt."""
        try:
            return super().release()
        finally:
            self._end_ticket()

    def close(self) -> None:
        """Close the connection, then end the attempt."""
        try:
            super().close()
        finally:
            self._end_ticket()


def paced(limiter: Pacer, timeout_seconds: float) -> ClientMiddlewareType:
    """A client middleware: every request on the wire waits for a ticket of the limiter, then
    has ``timeout_seconds`` to get its answer's headers. Use it with :func:`sent_trace` (or
    :func:`make_session`, which wires both): the trace marks the ticket sent when the request
    goes out.

    A middleware, not a call before ``session.get``: aiohttp silently sends an idempotent
    request a second time when a reused connection drops, calling the middleware again, and
    that send must count too. The ticket ends when the attempt does: for a
    :class:`PacedResponse` (the session's ``response_class``) when it is released or closed,
    after its body; for any other response as soon as its headers are in; when the send fails,
    at once (a request that never went out gives its place back; one that went out and got no
    answer counts a little longer). The timeout starts after the limiter admits the request (a
    session-wide ``total`` timeout would also count the wait for a place); the client's attempt
    deadline (:mod:`harvester.fetch.deadline`) starts at the same moment and bounds the body
    too.
    """

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        ticket = await limiter.reserve()
        admitted()  # the client's deadline for the attempt (body included) starts now
        token = _SENDING.set(ticket)
        try:
            async with asyncio.timeout(timeout_seconds):
                response = await handler(request)
        except BaseException:
            ticket.end(answered=False)  # gives the place back when the headers never went out
            raise
        finally:
            _SENDING.reset(token)
        ticket.mark_sent()  # a no-op after the trace's; without the trace, an answer came
        if isinstance(response, PacedResponse) and not response.closed:
            response.hold(ticket)
        else:
            ticket.end()
        return response

    return middleware


async def _on_headers_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    """The request's headers are about to be written to an open connection: mark it sent."""
    ticket = _SENDING.get()
    if ticket is not None:
        ticket.mark_sent()


def sent_trace() -> aiohttp.TraceConfig:
    """A trace config that marks a :func:`paced` request's ticket sent when its headers go out.

    aiohttp fires ``on_request_headers_sent`` once per send, after the connection (TCP and TLS)
    is up, just before the headers are buffered for the socket; a re-send on a new connection
    fires it again, for the new ticket. Marking writes nothing: the ticket already holds its
    place, so no store round trip delays the send.
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
    """One pooled session: every send holds its place from admission to the end of its
    answer, each request timed from its admission, connections kept alive past the longest
    window.

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
        response_class=PacedResponse,
    )
