"""Ways to run a Simulator outside the caller's loop: a thread, a process, or the foreground."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Self, TypeVar

from harvester.simulator.config import SimulatorConfig, to_jsonable
from harvester.simulator.server import Simulator

T = TypeVar("T")
START_TIMEOUT = 30.0  # seconds; a spawned interpreter imports aiohttp before it can answer
ADMIN_TIMEOUT = 10.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Background:
    """Context-manager plumbing shared by the thread and process runners."""

    base_url: str

    def close(self) -> None:
        """Stop the simulator; safe to call twice."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SimulatorThread(_Background):
    """A Simulator on its own event loop in a daemon thread; for sync code and subprocesses."""

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = Simulator(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="flipsnack-simulator", daemon=True
        )
        self._thread.start()
        try:
            self.base_url = self._run(self.simulator.start(host, port))
        except BaseException:
            self._halt()
            raise

    def counters(self) -> dict[str, Any]:
        """A JSON-able snapshot of the counters."""
        return self._call(self.simulator.counters)

    def reset_counters(self) -> None:
        """Zero the counters."""
        self._call(self.simulator.reset_counters)

    def reconfigure(self, **changes: Any) -> None:
        """Replace fields of the live config."""
        self._call(lambda: self.simulator.reconfigure(**changes))

    def close(self) -> None:
        """Stop the simulator and its thread."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            self._run(self.simulator.stop())
        self._halt()

    def _halt(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=START_TIMEOUT)
        self._loop.close()

    def _run(self, coroutine: Awaitable[T]) -> T:
        """Run a coroutine on the simulator's loop and wait for its result."""

        async def wrapped() -> T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(START_TIMEOUT)

    def _call(self, function: Callable[[], T]) -> T:
        """Call a function on the simulator's loop, so it never races a request."""
        done: Future[T] = Future()

        def call() -> None:
            try:
                done.set_result(function())
            except BaseException as error:
                done.set_exception(error)

        self._loop.call_soon_threadsafe(call)
        return done.result(START_TIMEOUT)


class SimulatorProcess(_Background):
    """A Simulator in its own (spawned) process, so it never shares the client's CPU."""

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_process_main,
            args=(config or SimulatorConfig(), host, port, child_conn),
            name="flipsnack-simulator",
            daemon=True,
        )
        self._process.start()
        child_conn.close()
        try:
            self.base_url: str = self._await_start()
        except BaseException:
            self._kill()
            raise
        self._admin = self.base_url.removesuffix("v1/") + "_sim/"

    def _await_start(self) -> str:
        """The child's base URL, once it listens; RuntimeError when it cannot start."""
        if not self._conn.poll(START_TIMEOUT):
            raise TimeoutError("the simulator process did not start in time")
        try:
            message = self._conn.recv()
        except EOFError:
            self._process.join(ADMIN_TIMEOUT)
            code = self._process.exitcode
            raise RuntimeError(f"the simulator process exited (code {code})") from None
        if not isinstance(message, str):
            raise RuntimeError(f"the simulator process failed to start: {message!r}")
        return message

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._process.pid

    def counters(self) -> dict[str, Any]:
        """A JSON-able snapshot of the counters (over ``GET /_sim/counters``)."""
        result: dict[str, Any] = self._request("counters")
        return result

    def reset_counters(self) -> None:
        """Zero the counters (over ``POST /_sim/reset``)."""
        self._request("reset", {})

    def reconfigure(self, **changes: Any) -> None:
        """Replace fields of the live config (over ``POST /_sim/config``); ValueError if bad."""
        body = {name: to_jsonable(name, value) for name, value in changes.items()}
        self._request("config", body)

    def close(self) -> None:
        """Ask the child to stop, and make sure it does."""
        if self._process.pid is None or not self._process.is_alive():
            return
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._process.join(timeout=ADMIN_TIMEOUT)
        self._kill()

    def _kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def _request(self, name: str, body: dict[str, Any] | None = None) -> Any:
        """Call an admin endpoint; GET without a body, POST with one."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self._admin + name, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with _NO_PROXY.open(request, timeout=ADMIN_TIMEOUT) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read() or b"{}")
            raise ValueError(answer.get("error", f"admin call failed: HTTP {error.code}")) from None


def _process_main(config: SimulatorConfig, host: str, port: int, conn: Connection) -> None:
    """The child: serve until the parent says stop or goes away."""
    asyncio.run(_serve_until_told(Simulator(config), host, port, conn))


async def _serve_until_told(simulator: Simulator, host: str, port: int, conn: Connection) -> None:
    try:
        conn.send(await simulator.start(host, port))
    except Exception as error:
        conn.send(repr(error).encode())  # bytes: not a base URL
        return
    loop = asyncio.get_running_loop()
    try:
        # recv() returns "stop", or raises EOFError when the parent dies: stop either way.
        with contextlib.suppress(EOFError, OSError):
            await loop.run_in_executor(None, conn.recv)
    finally:
        await simulator.stop()


def serve(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run a simulator in the foreground until SIGINT or SIGTERM."""
    asyncio.run(_serve_until_signal(Simulator(config), host, port))


async def _serve_until_signal(simulator: Simulator, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    base_url = await simulator.start(host, port)
    keys = ", ".join(sorted(simulator.config.keys)) or "none"
    print(f"Flipsnack simulator at {base_url} (API keys: {keys}); Ctrl-C to stop", flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
