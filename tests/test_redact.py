"""Redaction: the last line of defence for the key, the secret and signatures."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from harvester.logs import setup_logging
from harvester.redact import REDACTED, forget_secrets, redact, redact_data, register_secrets

KEY, SECRET = "45FD-267-7SG7832", "123ABCDE-456-7890-FGH"


@pytest.fixture(autouse=True)
def secrets() -> Iterator[None]:
    register_secrets([KEY, SECRET])
    yield
    forget_secrets()


@pytest.mark.parametrize(
    "text",
    [
        f"Cannot connect to https://api.flipsnack.com/v1/?action=x&apiKey={KEY}&signature=26e781d3",
        f"secret is {SECRET}",
        "GET /v1/?apiKey=someotherkey&signature=abcdef0123 failed",
        "params {'apiKey': 'someotherkey', 'signature': 'abcdef0123'}",
        'json {"apiKey": "someotherkey", "signature": "abcdef0123"}',
        "apiKey%3Dsomeotherkey%26signature%3Dabcdef0123",
    ],
)
def test_credentials_are_masked_wherever_they_appear(text: str) -> None:
    out = redact(text)
    for secret in (KEY, SECRET, "someotherkey", "abcdef0123", "26e781d3"):
        assert secret not in out
    assert REDACTED in out


def test_ordinary_text_is_untouched() -> None:
    text = "d3m0h45h 2026-01-01..2026-01-01: code 43: forbidden"
    assert redact(text) == text


def test_short_values_are_not_registered() -> None:
    register_secrets(["ab"])
    assert redact("about a cab") == "about a cab"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_and_tracebacks_are_redacted(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging(fmt, stream=stream)
    log = logging.getLogger("harvester.test")
    try:
        raise RuntimeError(f"boom at https://x/?apiKey={KEY}&signature=deadbeef")
    except RuntimeError:
        log.exception("request for %s failed", SECRET)
    out = stream.getvalue()
    assert KEY not in out and SECRET not in out and "deadbeef" not in out
    assert "boom" in out
    if fmt == "json":
        entry = json.loads(out.strip().splitlines()[0])
        assert entry["level"] == "error" and "Traceback" in entry["exception"]


def test_redact_data_masks_every_string_keys_included() -> None:
    data = {
        "reason": f"code 20 but {SECRET}",
        SECRET: [KEY, ("x", f"apiKey={KEY}"), 7, None, 1.5, True],
        3: {"nested": {"deep": SECRET}},
    }
    assert redact_data(data) == {
        "reason": f"code 20 but {REDACTED}",
        REDACTED: [REDACTED, ("x", f"apiKey={REDACTED}"), 7, None, 1.5, True],
        3: {"nested": {"deep": REDACTED}},
    }
    assert redact_data("plain") == "plain" and redact_data(42) == 42
