"""A Flipsnack-shaped API that misbehaves on purpose, on a loopback port, for the tests.

``collection.getStats`` answers by the collection's hash: a hash starting with ``good`` (or
``found``, the ones ``getList`` hands out) gets a valid answer; the others misbehave as their
name says (see :data:`MISBEHAVIOURS`). ``collection.getList`` never ends: every page brings
fifty collections never listed before. Signatures are not checked. Every loop is bounded in
time and bytes, and stops when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import threading
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from aiohttp import web

GOOD_DATA = {
    "impressions": 10,
    "views": 5,
    "time_spent": 7,
    "downloads": 1,
    "pages": [{"page": 1, "views": 5, "clicks": 1, "time_spent": 7}],
}
GIB = 1 << 30
MIB = 1 << 20
TRICKLE_EVERY = 0.25  # a byte this often: far inside any read timeout, never a whole answer
TRICKLE_FOR = 120.0  # the server gives up by itself after this long
NESTING = 200_000

# hash prefix → what the answer does wrong (the tests assert the reasons named here)
MISBEHAVIOURS = {
    "trickle": "a body one byte at a time, never finished",
    "huge": "a 1 GiB body, sent as fast as the client reads it",
    "bomb": "a gzip body of about 4.5 MiB that decompresses to 1 GiB",
    "deep": f"a {NESTING:,}-level nested JSON answer",
    "dupkeys": "a code-20 answer whose object repeats a key",
    "notfound": "HTTP 404 with a code-20 body",
}


def envelope(data: Any, code: int = 20) -> bytes:
    """A compact API envelope, as the API writes it."""
    return json.dumps({"code": code, "status": "OK", "data": data}, separators=(",", ":")).encode()


_BOMB: bytes | None = None


def gzip_bomb() -> bytes:
    """One gzip member whose content is 1 GiB of spaces (made once, in a few seconds)."""
    global _BOMB
    if _BOMB is None:
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: the gzip wrapper; 1: fast
        block = b" " * (16 * MIB)
        parts = [packer.compress(block) for _ in range(GIB // len(block))]
        _BOMB = b"".join([*parts, packer.flush()])
    return _BOMB


class FakeApi:
    """The misbehaving API in a daemon thread with its own event loop; a context manager."""

    def __init__(self, *, bomb: bool = True) -> None:
        self.requests: Counter[str] = Counter()  # by hash; "list" for getList pages
        self.bytes_sent: Counter[str] = Counter()
        self._bomb = gzip_bomb() if bomb else b""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.base_url = self._run(self._start())

    def _run(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v1/"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if query.get("action") == "collection.getList":
            self.requests["list"] += 1
            first = int(query.get("from", "0"))
            count = int(query.get("count", "50"))
            records = [{"hash": f"found{first + i:07d}"} for i in range(count)]
            return web.Response(body=envelope(records), content_type="application/json")
        collection = query.get("collectionHash", "")
        self.requests[collection] += 1
        for prefix, answer in self._answers().items():
            if collection.startswith(prefix):
                return await answer(request, collection)
        return web.Response(body=envelope(GOOD_DATA), content_type="application/json")

    def _answers(self) -> dict[str, Callable[[web.Request, str], Awaitable[web.StreamResponse]]]:
        return {
            "trickle": self._trickle,
            "huge": self._huge,
            "bomb": self._gzip_bomb,
            "deep": self._deep,
            "dupkeys": self._duplicate_keys,
            "notfound": self._not_found,
        }

    async def _stream(
        self, request: web.Request, name: str, first: bytes, more: bytes, pause: float, most: int
    ) -> web.StreamResponse:
        """Headers, ``first``, then ``more`` again and again (bounded), until the client leaves."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        until = loop.time() + TRICKLE_FOR
        try:
            await response.write(first)
            sent = len(first)
            while sent < most and loop.time() < until:
                await response.write(more)
                sent += len(more)
                self.bytes_sent[name] += len(more)
                if pause:
                    await asyncio.sleep(pause)
        except (ConnectionError, RuntimeError):  # the client closed: what it should do
            pass
        return response

    async def _trickle(self, request: web.Request, name: str) -> web.StreamResponse:
        return await self._stream(request, name, b'{"code":20,"data":', b" ", TRICKLE_EVERY, GIB)

    async def _huge(self, request: web.Request, name: str) -> web.StreamResponse:
        return await self._stream(request, name, b'{"code":20,"data":"', b"x" * MIB, 0.0, GIB)

    async def _gzip_bomb(self, request: web.Request, name: str) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=self._bomb, headers=headers)

    async def _deep(self, request: web.Request, name: str) -> web.StreamResponse:
        body = b'{"code":20,"data":' + b"[" * NESTING + b"]" * NESTING + b"}"
        return web.Response(body=body, content_type="application/json")

    async def _duplicate_keys(self, request: web.Request, name: str) -> web.StreamResponse:
        good = envelope(GOOD_DATA)
        body = good.replace(b'"views":5,', b'"views":5,"views":999999,', 1)
        return web.Response(body=body, content_type="application/json")

    async def _not_found(self, request: web.Request, name: str) -> web.StreamResponse:
        return web.Response(status=404, body=envelope(GOOD_DATA), content_type="application/json")

    def close(self) -> None:
        """Stop serving and end the thread; safe to call twice."""
        if self._runner is not None:
            self._run(self._runner.cleanup())
            self._runner = None
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
