"""An S3 API for tests in a process of its own (moto's server), and a loopback proxy in front of
it that can misbehave the ways real stores and networks do: lose an answer after forwarding
the request, ignore conditional headers, fail requests with 503.

The proxy answers every request with ``Connection: close``: each request is one connection,
which keeps the forwarding simple and the counts exact.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONDITIONAL = frozenset({"if-match", "if-none-match", "x-goog-if-generation-match"})
HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "expect"})


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_process(log: Path) -> Iterator[str]:
    """``python -m moto.server`` on a free loopback port (its log to ``log``); its endpoint."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,  # never a pipe nobody reads: a full pipe stalls moto
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.05)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# What to do with one request: forward it, forward it and drop the answer, or fail it (503).
Decide = Callable[[str, str], str]


@dataclass
class StoreProxy:
    """A loopback proxy in front of ``upstream``; ``decide(method, path)`` says what to do."""

    upstream: str
    strip_conditions: bool = False
    decide: Decide = lambda method, path: "forward"
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status
    dropped: int = 0
    _server: Any = None

    @property
    def endpoint(self) -> str:
        """The proxy's URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StoreProxy:
        """Serve on a free loopback port, in a thread."""
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StoreProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        body = _read_body(request)
        action = self.decide(request.command, request.path)
        if action == "fail":
            self.seen.append((request.command, request.path, 503))
            _answer(request, 503, [], b"<Error><Code>SlowDown</Code></Error>")
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        if self.strip_conditions:
            headers = {k: v for k, v in headers.items() if k.lower() not in CONDITIONAL}
        headers["Content-Length"] = str(len(body))
        host, _, port = self.upstream.removeprefix("http://").partition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request(request.command, request.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        conn.close()
        self.seen.append((request.command, request.path, answer.status))
        if action == "drop":  # the store did it; the client never hears so
            self.dropped += 1
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        length = answer.getheader("Content-Length", "0") if request.command == "HEAD" else None
        _answer(request, answer.status, answer.getheaders(), data, length)


def _read_body(request: http.server.BaseHTTPRequestHandler) -> bytes:
    """The request body, whether sized or chunked."""
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(request.rfile.readline().split(b";")[0], 16)
            if size == 0:
                request.rfile.readline()
                return body
            body += request.rfile.read(size)
            request.rfile.readline()
    length = int(request.headers.get("Content-Length") or 0)
    return request.rfile.read(length) if length else b""


def _answer(
    request: http.server.BaseHTTPRequestHandler,
    status: int,
    headers: list[tuple[str, str]],
    data: bytes,
    length: str | None = None,
) -> None:
    request.send_response(status)
    for name, value in headers:
        if name.lower() not in HOP:
            request.send_header(name, value)
    request.send_header("Content-Length", length if length is not None else str(len(data)))
    request.send_header("Connection", "close")
    request.close_connection = True
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(data)
