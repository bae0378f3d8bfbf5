"""Logging set-up: human-readable lines by default, JSON lines for cron and aggregators.

Every record passes :func:`harvester.redact.redact` on its way out, traceback text included,
so a foreign exception that carries a URL cannot leak the key or a signature. Control
characters in the values a record carries (a path, an output name, an API's message) are
written as escapes (``\x1b``, ``\n``, ``\u202e``): a value can neither drive the terminal
that shows the log nor forge a line of its own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from harvester.redact import redact

__all__ = ["LOG_FORMATS", "escape_controls", "setup_logging"]

LOG_FORMATS = ("text", "json")

# C0 and C1 controls, DEL, the line and paragraph separators, and the bidirectional overrides
# and isolates (which reorder what a terminal shows).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with every control character written as an escape, but those in ``keep``."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep:
            return char
        if char in _SHORT:
            return _SHORT[char]
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return _CONTROLS.sub(escape, text)


class _Escaped:
    """A log argument shown with its control characters escaped (and redacted)."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __str__(self) -> str:
        return escape_controls(redact(str(self._value)))

    def __repr__(self) -> str:
        return escape_controls(redact(repr(self._value)))


def _message(record: logging.LogRecord) -> str:
    """The record's message, its arguments' control characters escaped, its own kept to
    newlines and tabs (a multi-line message stays one), redacted."""
    args: Any = record.args
    if isinstance(args, Mapping):
        args = {k: _arg(v) for k, v in args.items()}
    elif isinstance(args, tuple):
        args = tuple(_arg(a) for a in args)
    msg = str(record.msg)
    text = msg % args if args else msg
    return escape_controls(redact(text), keep="\n\t")


def _arg(value: Any) -> Any:
    """Numbers as they are (``%d``, ``%.1f`` need them); anything else escaped when shown."""
    return value if isinstance(value, int | float) else _Escaped(value)


class _TextFormatter(logging.Formatter):
    """``2026-11-27T10:00:00Z INFO message``, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """UTC, so logs from cron hosts in different zones line up."""
        return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def format(self, record: logging.LogRecord) -> str:
        record.message = _message(record)
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return escape_controls(redact(line), keep="\n\t")


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and exception), redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
        }
        if record.exc_info:
            entry["exception"] = escape_controls(
                redact(self.formatException(record.exc_info)), keep="\n\t"
            )
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
