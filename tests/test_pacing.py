"""Pacing at the wire: the client middleware and the trace that stamps a request when it is sent.

Over real loopback connections (a mock would bypass the connector, the pool and the traces):
a small raw HTTP/1.1 server that can answer, drop a reused connection, or never finish a TLS
handshake, and records what the limiter said when each request arrived.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from harvester.fetch.session import make_session, paced, sent_trace
from harvester.model import RateLimit
from harvester.pacing.limiter import UNANSWERED_GRACE_SECONDS, RateLimiter

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class RawServer:
    """HTTP/1.1 on a free loopback port; ``drop_reused`` hangs up on a connection's 2nd request."""

    def __init__(
        self, limiter: RateLimiter, *, drop_reused: bool = False, silent: bool = False
    ) -> None:
        self.limiter = limiter
        self.drop_reused = drop_reused
        self.silent = silent  # accept, read, never answer (a TLS handshake that never ends)
        self.silent_after_read = False  # read a request's headers, never answer it
        self.arrivals: list[tuple[float, int, int]] = []  # (time, calls, live) on arrival
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/v1/"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.silent:
                await reader.read()  # until the client gives up
                return
            for served in range(1_000):
                await reader.readuntil(b"\r\n\r\n")
                self.arrivals.append((time.monotonic(), self.limiter.calls, self.limiter.live))
                if self.silent_after_read:
                    await reader.read()
                    return
                if self.drop_reused and served == 1:
                    return  # read, never answered: the client sees the connection drop
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def limiter() -> RateLimiter:
    return RateLimiter([RateLimit(100, 1.0)])


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        return await response.read()


def _probe(seen: list[tuple[str, int, int]], limiter: RateLimiter) -> aiohttp.TraceConfig:
    """A trace that notes the limiter's counts when a connection is made."""

    async def on_connection(session: Any, context: SimpleNamespace, params: Any) -> None:
        seen.append(("connected", limiter.calls, limiter.live))

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_connection)
    return trace


@pytest.fixture
async def paced_session(limiter: RateLimiter) -> AsyncIterator[Callable[..., Any]]:
    """``paced`` + ``sent_trace`` on a session of our own, with extra traces when asked."""
    sessions: list[aiohttp.ClientSession] = []

    def open_session(*traces: aiohttp.TraceConfig, timeout: float = 5.0) -> Any:
        session = aiohttp.ClientSession(
            middlewares=[paced(limiter, timeout)], trace_configs=[sent_trace(), *traces]
        )
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        await session.close()


async def test_a_request_holds_its_place_from_admission_until_its_answer(
    limiter: RateLimiter, paced_session: Callable[..., aiohttp.ClientSession]
) -> None:
    seen: list[tuple[str, int, int]] = []
    session = paced_session(_probe(seen, limiter))
    async with RawServer(limiter) as server:
        assert await _get(session, server.url()) == b"ok"
    # Connected with its place held, not sent yet; arrived sent and still holding it.
    assert seen == [("connected", 0, 1)]
    assert [(calls, live) for _, calls, live in server.arrivals] == [(1, 1)]
    assert limiter.calls == 1 and limiter.live == 0
    (window,) = limiter.window_use()
    assert len(window.ended) == 1 and window.ended[0] >= server.arrivals[0][0]


async def test_a_paced_response_ends_its_call_when_the_body_is_read_not_at_its_headers() -> None:
    limiter = RateLimiter([RateLimit(100, 1.0)])
    headers_sent = asyncio.Event()
    finish = asyncio.Event()

    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        await writer.drain()
        headers_sent.set()
        await finish.wait()
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow_body, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with make_session(limiter, timeout_seconds=5, concurrency=1) as session:
        async with session.get(f"http://127.0.0.1:{port}/v1/") as response:
            assert response.status == 200 and headers_sent.is_set()
            assert limiter.live == 1 and limiter.window_use()[0].ended == ()
            body = asyncio.ensure_future(response.read())
            await asyncio.sleep(0.05)
            assert not body.done() and limiter.live == 1  # the answer is still arriving
            finish.set()
            assert await body == b"ok"
        assert limiter.live == 0 and len(limiter.window_use()[0].ended) == 1
    server.close()


async def test_a_request_that_went_out_and_timed_out_counts_a_grace_longer(
    limiter: RateLimiter,
) -> None:
    session = aiohttp.ClientSession(middlewares=[paced(limiter, 0.2)], trace_configs=[sent_trace()])
    async with session, RawServer(limiter, drop_reused=True) as server:
        server.drop_reused = False
        server.silent_after_read = True
        with pytest.raises(TimeoutError):
            await _get(session, server.url())
        ended = time.monotonic()
    assert limiter.calls == 1 and limiter.live == 0
    (window,) = limiter.window_use()
    assert window.ended[0] >= ended + UNANSWERED_GRACE_SECONDS - 0.05


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_frees_its_slot(
    paced_session: Callable[..., aiohttp.ClientSession],
) -> None:
    limiter = RateLimiter([RateLimit(1, 60.0)])  # one call a minute: a kept slot would block
    session = aiohttp.ClientSession(middlewares=[paced(limiter, 5.0)], trace_configs=[sent_trace()])
    async with session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await _get(session, f"http://127.0.0.1:{_free_port()}/v1/")
        assert limiter.calls == 0 and limiter.live == 0
        async with RawServer(limiter) as server:
            assert await asyncio.wait_for(_get(session, server.url()), 5) == b"ok"
    assert limiter.calls == 1 and limiter.waits == 0


async def test_a_handshake_that_never_ends_times_out_and_frees_its_slot(
    limiter: RateLimiter, paced_session: Callable[..., aiohttp.ClientSession]
) -> None:
    session = paced_session(timeout=0.2)
    async with RawServer(limiter, silent=True) as server:
        with pytest.raises(TimeoutError):
            await _get(session, server.url("https"))
    assert limiter.calls == 0 and limiter.live == 0


async def test_a_request_cancelled_before_it_was_sent_frees_its_slot(
    limiter: RateLimiter, paced_session: Callable[..., aiohttp.ClientSession]
) -> None:
    session = paced_session()
    async with RawServer(limiter, silent=True) as server:
        request = asyncio.ensure_future(_get(session, server.url("https")))
        while not server.connections:
            await asyncio.sleep(0.01)
        assert limiter.live == 1
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    assert limiter.calls == 0 and limiter.live == 0


async def test_aiohttp_resending_on_a_dropped_reused_connection_is_paced_and_counted() -> None:
    # Two calls per 0.5 s: the silent re-send is the third send and must wait its turn.
    limiter = RateLimiter([RateLimit(2, 0.5)])
    async with (
        RawServer(limiter, drop_reused=True) as server,
        make_session(limiter, timeout_seconds=5, concurrency=1) as session,
    ):
        assert await _get(session, server.url()) == b"ok"
        assert await _get(session, server.url()) == b"ok"  # dropped once, re-sent by aiohttp
    assert server.connections == 2 and len(server.arrivals) == 3
    assert limiter.calls == 3 and limiter.live == 0
    first, _, resent = (arrived for arrived, _, _ in server.arrivals)
    assert resent - first >= 0.5


async def test_concurrent_requests_each_hold_their_own_place() -> None:
    limit = RateLimit(4, 0.25)
    limiter = RateLimiter([limit])
    async with (
        RawServer(limiter) as server,
        make_session(limiter, timeout_seconds=5, concurrency=5) as session,
    ):
        answers = await asyncio.gather(*(_get(session, server.url()) for _ in range(20)))
    assert answers == [b"ok"] * 20
    assert limiter.calls == 20 and limiter.live == 0
    # Each request was marked sent before it arrived, and the server's windows hold.
    arrivals = sorted(server.arrivals)
    assert all(calls >= rank for rank, (_, calls, _) in enumerate(arrivals, start=1))
    arrived = [t for t, _, _ in arrivals]
    for i in range(len(arrived) - limit.calls):
        assert arrived[i + limit.calls] - arrived[i] >= limit.seconds


async def test_make_session_keeps_connections_alive_past_the_longest_window() -> None:
    limiter = RateLimiter([RateLimit(5, 1.0), RateLimit(60, 60.0)])
    async with make_session(limiter, timeout_seconds=5, concurrency=3) as session:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector.limit == connector.limit_per_host == 3
        assert connector._keepalive_timeout > 60.0  # aiohttp's default (15 s) is shorter
    async with make_session(RateLimiter([]), timeout_seconds=5, concurrency=1) as session:
        assert session.connector._keepalive_timeout == 15.0  # type: ignore[union-attr]
