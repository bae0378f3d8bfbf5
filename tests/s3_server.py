"""moto's S3 API on a free loopback port, counting every request it answers.

The count is taken at the server (a WSGI middleware around moto's application), so it is what a
bill would show: every HEAD, GET, LIST and PUT, whichever client in whichever process sent it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def kind_of(method: str, path: str, query: str) -> str:
    """A request's S3 operation, roughly: ``LIST``, ``GET``, ``HEAD``, ``PUT``, ``DELETE``..."""
    args = parse_qs(query, keep_blank_values=True)
    key = path.lstrip("/").partition("/")[2]
    if method == "GET" and (not key or "list-type" in args or "prefix" in args):
        return "LIST"
    if method == "POST" and ("uploads" in args or "uploadId" in args):
        return "MULTIPART"
    return method


class CountingS3Server(ThreadedMotoServer):
    """``ThreadedMotoServer`` whose every answered request is recorded (method, path)."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []  # (kind, method, path)

    def _server_entry(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )

        class Quiet(MotoRequestHandler):  # type: ignore[misc]
            def log_request(self, *args: Any) -> None:  # one line per request: too many
                pass

        app = self._counting(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=Quiet)
        self._server_ready_event.set()
        self._server.serve_forever()

    def _counting(self, app: WsgiApp) -> WsgiApp:
        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
            query = environ.get("QUERY_STRING", "")
            if not path.startswith("/moto-api"):
                kind = kind_of(method, path, query)
                if method == "PUT" and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
                    kind = "COPY"  # a server-side copy (a move is a copy and a delete)
                with self._lock:
                    self.requests.append((kind, method, path))
            return app(environ, start_response)

        return counted

    @property
    def endpoint(self) -> str:
        """The server's URL."""
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def reset_counts(self) -> None:
        """Forget the requests counted so far."""
        with self._lock:
            self.requests.clear()

    def counts(self, bucket: str | None = None) -> Counter[str]:
        """Requests by kind since the last reset (those to ``bucket`` only, when given)."""
        with self._lock:
            found = list(self.requests)
        return Counter(
            kind
            for kind, _, path in found
            if bucket is None or path.lstrip("/").partition("/")[0] == bucket
        )
