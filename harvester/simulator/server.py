"""The aiohttp app: credentials, rate windows, fault injection, latency, counters, admin.

Per request, in this order: mandatory parameters (30), API key (41), then the request counts
in the key's rate windows, signature (44), rate limits (31/32), one injected fault at most,
then the action itself (:func:`harvester.simulator.answers.act`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from harvester.api import sign
from harvester.simulator import answers
from harvester.simulator.answers import Answer
from harvester.simulator.config import SimulatorConfig, changes_from_mapping
from harvester.simulator.state import Counters, Randomness, RateWindows

API_PATHS = ("/", "/v1", "/v1/")
SHUTDOWN_SECONDS = 0.25  # stop() cancels handlers still stalling after this long
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class Simulator:
    """A Flipsnack-compatible API server running inside the caller's event loop."""

    def __init__(
        self, config: SimulatorConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config if config is not None else SimulatorConfig()
        self._clock = clock  # what the rate windows measure; tests may drive it
        self._random = Randomness(self._config.seed)
        self._counters = Counters()
        self._windows = RateWindows()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    @property
    def config(self) -> SimulatorConfig:
        """The live config; read on every request."""
        return self._config

    @config.setter
    def config(self, config: SimulatorConfig) -> None:
        if config.seed != self._random.seed:
            self._random = Randomness(config.seed)  # a new seed restarts the draws
        self._config = config

    def reconfigure(self, **changes: Any) -> None:
        """Replace fields of the live config (validated); takes effect on the next request."""
        self.config = dataclasses.replace(self._config, **changes)

    def counters(self) -> dict[str, Any]:
        """A JSON-able snapshot of the counters."""
        return self._counters.snapshot()

    def reset_counters(self) -> None:
        """Zero the counters (the rate windows keep their history, as the real API would)."""
        self._counters = self._counters.fresh()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port); return the base URL ending in ``/v1/``."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            handler_cancellation=True,  # a client that gives up frees its handler
            shutdown_timeout=SHUTDOWN_SECONDS,
        )
        await runner.setup()
        sock = _listen(host, port)
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        url_host = _WILDCARDS.get(host, host)
        if ":" in url_host:
            url_host = f"[{url_host}]"
        self.base_url = f"http://{url_host}:{sock.getsockname()[1]}/v1/"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and end the handlers still running."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _app(self) -> web.Application:
        app = web.Application()
        for path in API_PATHS:
            app.router.add_get(path, self._handle)
            app.router.add_post(path, self._handle)
        app.router.add_get("/_sim/counters", self._admin_counters)
        app.router.add_post("/_sim/reset", self._admin_reset)
        app.router.add_post("/_sim/config", self._admin_config)
        return app

    # --- the API --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._counters.enter()
        try:
            params: dict[str, str] = dict(request.query)
            if request.method == "POST":
                form = await request.post()
                params.update((k, v) for k, v in form.items() if isinstance(v, str))
            answer = self._decide(params)
            delay = self._random.latency(self._config.latency)
            if delay > 0:
                await asyncio.sleep(delay)
            return await self._deliver(request, answer)
        finally:
            self._counters.leave()

    def _decide(self, params: dict[str, str]) -> Answer:
        """Run the checks that need state, then the fault draw, then the action."""
        config = self._config
        if answers.missing_mandatory(params):
            return answers.envelope(answers.MISSING_PARAMETER)
        secret = config.keys.get(params["apiKey"])
        if secret is None:
            return answers.envelope(answers.INVALID_CREDENTIALS)
        limited = None
        if config.enforce_limits:
            limited = self._windows.admit(params["apiKey"], self._clock(), config.rate_limits)
        if params["signature"] != sign(params, secret):
            self._counters.bad_signatures += 1
            return answers.envelope(answers.INVALID_SIGNATURE)
        if limited is not None:
            self._counters.rate_limit_violations += 1
            return answers.envelope(limited)
        today = datetime.now(UTC).date()
        kind = self._random.fault(config.faults)
        if kind is None:
            return answers.act(params, config, today)
        self._counters.faults[kind] += 1
        return answers.fault(kind, config, lambda: answers.act(params, config, today))

    async def _deliver(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        """Send the answer (after its stall), or drop the connection; count what was sent."""
        if answer.stall > 0:
            await asyncio.sleep(answer.stall)
        if answer.drop:
            if request.transport is not None:
                request.transport.abort()
            # Nothing reaches the client: aiohttp finds the transport closed and gives up.
            raise asyncio.CancelledError
        counters = self._counters
        counters.http_status[answer.status] += 1
        if answer.code is not None:
            counters.codes[answer.code] += 1
        if answer.success is not None:
            counters.successes[answer.success] += 1
        return web.Response(
            status=answer.status,
            body=answer.body,
            content_type=answer.content_type,
            headers=answer.headers,
        )

    # --- admin (no signature: for tests, benchmarks and SimulatorProcess) -------------------

    async def _admin_counters(self, request: web.Request) -> web.Response:
        return web.json_response(self.counters())

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset_counters()
        return web.json_response({"ok": True})

    async def _admin_config(self, request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
            self.reconfigure(**changes_from_mapping(data))
        except ValueError as error:  # JSONDecodeError is a ValueError too
            return web.json_response({"ok": False, "error": str(error)}, status=400)
        return web.json_response({"ok": True})


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; one socket, so port 0 means one port."""
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address[:2], family=family)
