"""Log lines: control characters in the values they carry are escaped, in text and JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from harvester.logs import escape_controls, setup_logging
from harvester.simulator import SimulatorThread
from tests.conftest import job_dict, run_cli

# An ANSI colour, a cursor move, a bidirectional override and a newline: in a folder's name.
NASTY = "out\x1b[31mred\x1b[2J\u202eevil\nforged"
RAW = ("\x1b", "\u202e", "\x9b")


def test_control_characters_in_the_output_never_reach_the_logs_raw(
    simulator: SimulatorThread, tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_dict(simulator.base_url, tmp_path / NASTY)))
    text = run_cli("run", str(path), "-v", env=env)
    assert text.returncode == 0, text.stderr
    assert not any(c in text.stderr for c in RAW), repr(text.stderr[-2000:])
    assert "out\\x1b[31mred\\x1b[2J\\u202eevil\\nforged" in text.stderr
    # Every line is a line of the log: none starts with the value's "forged" half.
    assert not any(line.startswith("forged") for line in text.stderr.splitlines())
    as_json = run_cli("run", str(path), "--refresh", "--log-format", "json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert not any(c in as_json.stderr for c in RAW)
    messages = [json.loads(line)["message"] for line in as_json.stderr.splitlines()]
    assert any("out\\x1b[31mred" in m for m in messages), messages
    assert not any(c in m for m in messages for c in (*RAW, "\nforged"))


def test_a_record_keeps_its_own_lines_and_figures(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    setup_logging("text", logging.INFO, stream=sys.stderr)
    log = logging.getLogger("harvester")
    log.info("%d units, %.1f s, in %s\nsecond line", 3, 1.25, "a\tb\x07")
    err = capsys.readouterr().err
    assert err.endswith(" INFO    3 units, 1.2 s, in a\\tb\\x07\nsecond line\n")
    assert escape_controls("tab\tnew\nline\r", keep="\n") == "tab\\tnew\nline\\r"
