"""A TCP proxy that holds what the client sends for a random while before passing it on: a
server that reads its socket late, a congested path. Answers come back at once.

It runs in a thread of its own with its own event loop, so a test may block its own loop
without blocking the proxy. Order within a connection is kept: a chunk is passed on no sooner
than the one before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from types import TracebackType
from typing import Self

__all__ = ["DelayProxy"]


class DelayProxy:
    """``127.0.0.1:port`` relayed to ``upstream``; client bytes held ``delay`` seconds each."""

    def __init__(self, upstream: tuple[str, int], delay: tuple[float, float], seed: int) -> None:
        self.upstream = upstream
        self.delay = delay
        self._random = random.Random(seed)
        self.port = 0
        self.held: list[float] = []  # every hold, for the test to check it happened
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.ensure_future(self._pipe(up_reader, writer))
        try:
            await self._held_pipe(reader, up_writer)
        finally:
            with contextlib.suppress(Exception):
                await back
            self._tasks.discard(task)

    async def _held_pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to server: each chunk held a random while, never overtaking the last."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            while chunk := await reader.read(65536):
                hold = self._random.uniform(*self.delay)
                self.held.append(hold)
                last = max(last, loop.time() + hold)
                await asyncio.sleep(max(0.0, last - loop.time()))
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def url(self, path: str = "/v1/") -> str:
        """The proxy's base URL."""
        return f"http://127.0.0.1:{self.port}{path}"

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    def close(self) -> None:
        """Stop the proxy and its thread."""
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
