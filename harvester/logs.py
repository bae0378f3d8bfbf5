"""Logging set-up: human-readable lines by default, JSON lines for cron and aggregators.

Every record passes :func:`harvester.redact.redact` on its way out, traceback text included,
so a foreign exception that carries a URL cannot leak the key or a signature.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from harvester.redact import redact

__all__ = ["LOG_FORMATS", "setup_logging"]

LOG_FORMATS = ("text", "json")


class _TextFormatter(logging.Formatter):
    """``2026-11-27T10:00:00Z INFO message``, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """UTC, so logs from cron hosts in different zones line up."""
        return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and exception), redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        # Redacted field by field, before encoding: masking encoded text could break its escapes.
        return json.dumps(entry, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time: a live progress display redirects it
    so that log lines print above the display instead of through it."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


def setup_logging(
    fmt: str = "text", level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Send the harvester's logs to ``stream`` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger("harvester")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
