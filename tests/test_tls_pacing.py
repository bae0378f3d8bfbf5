"""Pacing at the wire, end to end: HTTPS whose handshakes cost a random 0-250 ms.

The harvester (``python -m harvester run`` in a child process) talks HTTPS to a proxy that holds
each new connection's TLS handshake a random 0-250 ms, then relays the decrypted requests to
the simulator (its own process, counting arrivals in 5/1 s and 30/10 s windows). The proxy ends
each client connection after one to three requests, so every burst needs new connections. A
limiter that counts a call from its admission lets a burst whose first calls sat in a handshake
arrive late, and the next burst on time: more than 5 in the server's second. Counted from the
moment a request is sent, the windows hold whatever the handshakes cost.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import yaml

from harvester.model import RateLimit
from harvester.simulator import SimulatorConfig, SimulatorProcess
from tests.conftest import API_KEY, API_SECRET, assert_complete, job_dict, run_cli

LIMITS = (RateLimit(5, 1.0), RateLimit(30, 10.0))
HANDSHAKE_DELAY = (0.0, 0.25)  # seconds the proxy holds a new connection before TLS
REQUESTS_PER_CONNECTION = (1, 3)
DAYS = 25  # two collections by day: 50 units, two periods of the 10 s window


class TlsProxy:
    """HTTPS on a free loopback port, relayed as plain HTTP to ``upstream``; in its own thread."""

    def __init__(self, upstream: tuple[str, int], context: ssl.SSLContext, seed: int) -> None:
        self.upstream = upstream
        self.context = context
        self.seed = seed
        self.random = random.Random(seed)
        self.handshakes = 0
        self.requests = 0
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        proxy = self

        class Held(asyncio.Protocol):
            """Reads nothing until the handshake's hold is over: the ClientHello must wait."""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                transport.pause_reading()
                task = asyncio.get_running_loop().create_task(proxy._client(transport))
                proxy._tasks.add(task)
                task.add_done_callback(proxy._tasks.discard)

        self._server = await self._loop.create_server(Held, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, transport: asyncio.Transport) -> None:
        """Hold the handshake, do the server side of TLS, relay a few requests, hang up."""
        writer: asyncio.StreamWriter | None = None
        try:
            await asyncio.sleep(self.random.uniform(*HANDSHAKE_DELAY))
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            tls = await self._loop.start_tls(transport, protocol, self.context, server_side=True)
            assert tls is not None
            protocol.connection_made(tls)
            writer = asyncio.StreamWriter(tls, protocol, reader, self._loop)
            self.handshakes += 1
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            try:
                keep = self.random.randint(*REQUESTS_PER_CONNECTION)
                for i in range(keep):
                    if not await self._relay(reader, writer, up_reader, up_writer, i == keep - 1):
                        break
            finally:
                up_writer.close()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to relay
        finally:
            if writer is not None:
                writer.close()
            else:
                transport.close()

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        last: bool,
    ) -> bool:
        """One GET and its answer; the last answer tells the client the connection closes."""
        try:
            request = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed an idle connection
        self.requests += 1
        up_writer.write(request)
        await up_writer.drain()
        head = await up_reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await up_reader.readexactly(length)
        if last:
            head = head[:-2] + b"Connection: close\r\n\r\n"
        writer.write(head + body)
        await writer.drain()
        return True

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """The real API's shape of limits, scaled down, enforced; a few ms of latency."""
    return SimulatorConfig(
        seed=11,
        keys={API_KEY: API_SECRET},
        rate_limits=LIMITS,
        enforce_limits=True,
        latency=(0.001, 0.01),
    )


@pytest.fixture
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_proxy(
    sim_config: SimulatorConfig, certificate_authority: trustme.CA
) -> Iterator[tuple[TlsProxy, SimulatorProcess]]:
    """The simulator in its own process, behind the slow-handshake TLS proxy."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(context)
    with SimulatorProcess(sim_config) as simulator:
        host, port = simulator.base_url.split("//")[1].split("/")[0].split(":")
        seed = random.randrange(2**32)  # a new draw of delays each run; named on failure
        proxy = TlsProxy((host, int(port)), context, seed=seed)
        try:
            yield proxy, simulator
        finally:
            proxy.close()


@pytest.mark.slow
def test_no_window_overflows_when_handshakes_are_slow(
    tmp_path: Path,
    output_dir: Path,
    env: dict[str, str],
    sim_config: SimulatorConfig,
    certificate_authority: trustme.CA,
    tls_proxy: tuple[TlsProxy, SimulatorProcess],
) -> None:
    proxy, simulator = tls_proxy
    ca_file = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(ca_file))
    job = job_dict(
        f"https://127.0.0.1:{proxy.port}/v1/",
        output_dir,
        concurrency=5,
        start="2026-03-01",
        end=f"2026-03-{DAYS:02d}",
        collections=[{"hash": "d3m0h45h"}, {"hash": "x9y8z7"}],
    )
    job["api"]["rate_limits"] = [{"calls": r.calls, "seconds": r.seconds} for r in LIMITS]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))

    # aiohttp builds its default SSL context at import: the child must see the CA from the start.
    done = run_cli("run", str(path), env={**env, "SSL_CERT_FILE": str(ca_file)}, timeout=60)
    counters = simulator.counters()

    limit_answers = counters["codes"].get("31", 0) + counters["codes"].get("32", 0)
    assert counters["rate_limit_violations"] == 0 and limit_answers == 0, (
        f"{limit_answers} answers 31/32 ({counters['codes']}); "
        f"{proxy.handshakes} handshakes, proxy seed {proxy.seed}:\n{done.stderr}"
    )
    assert done.returncode == 0, done.stderr
    assert_complete(path, sim_config)
    # The run did pay for new connections: about one for every two requests.
    assert proxy.handshakes >= 2 * DAYS // 3, proxy.handshakes
