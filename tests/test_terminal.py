"""Where the CLI's output goes: a pipe closed early, a dumb terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harvester.errors import EXIT_CLOSED_PIPE
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import assert_complete, run_cli

JobFile = Callable[..., Path]
UNITS = 14 + 16 + 3  # the conftest job
PACED = {"rate_limits": [{"calls": 15, "seconds": 1}]}  # about three seconds of run


def _many_reports(output: Path, n: int) -> None:
    """``n`` run reports, as many runs would leave: far more lines than a pipe buffers."""
    reports = output / "_state" / "reports"
    template = json.loads(next(reports.glob("run-*.json")).read_text())
    for i in range(n):
        run_id = f"20260101T{i:06d}000000Z"
        (reports / f"run-{run_id}.json").write_text(json.dumps({**template, "run_id": run_id}))


def test_a_pipe_closed_early_ends_the_command_quietly_with_141(
    job_file: JobFile, output_dir: Path, env: dict[str, str]
) -> None:
    assert run_cli("run", str(job_file()), "-q", env=env).returncode == 0
    _many_reports(output_dir, 3000)  # about 300 KB of lines: the command is still writing
    reader = subprocess.Popen(
        [sys.executable, "-m", "harvester", "runs", str(output_dir), "--limit", "3001"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    first = reader.stdout.readline()  # `| head -1`
    reader.stdout.close()
    errors = reader.stderr.read()
    assert reader.wait(60) == EXIT_CLOSED_PIPE
    assert first.startswith(b"started (UTC)")
    assert errors == b""  # no broken-pipe error, no traceback


def test_a_run_whose_log_reader_went_away_keeps_its_exit_code(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    path = job_file()
    run = subprocess.Popen(
        [sys.executable, "-m", "harvester", "run", str(path), "--progress-every", "0.2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert run.stderr is not None
    run.stderr.readline()  # `2>&1 | head -1`
    run.stderr.close()
    assert run.wait(60) == 0
    assert_complete(path, sim_config)
    assert simulator.counters()["requests"] == UNITS


def _screen(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with stderr on a terminal; what the terminal got, and the exit code."""
    main, child = pty.openpty()
    run = subprocess.Popen(
        [sys.executable, "-m", "harvester", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child,
    )
    os.close(child)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif run.poll() is not None:
            break
    os.close(main)
    return run.wait(30), screen.decode("utf-8", "replace")


def test_a_dumb_terminal_gets_plain_progress_lines(
    job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    path = job_file(api={"base_url": simulator.base_url, "timeout_seconds": 5, **PACED})
    code, text = _screen(
        ["run", str(path), "--progress-every", "0.5"], {**env, "TERM": "dumb", "COLUMNS": "200"}
    )
    assert code == 0, text
    lines = [line for line in text.splitlines() if " progress: " in line]
    assert len(lines) >= 2, text
    assert all(re.search(r"progress: [\d,]+/33 units \(.*; ETA ", line) for line in lines)
    assert "\x1b[" not in text  # no cursor movement, no colour: a dumb terminal shows them raw
    assert "finished: 33 units fetched and committed" in text
