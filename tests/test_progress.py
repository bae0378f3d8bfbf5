"""Progress: a live display on a terminal, plain lines off it, and an honest ETA."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harvester.model import RateLimit
from harvester.run.progress import Snapshot, describe, eta_seconds
from harvester.simulator import SimulatorThread
from tests.conftest import run_cli

JobFile = Callable[..., Path]
PER_MINUTE = (RateLimit(5, 1.0), RateLimit(60, 60.0))
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n
# 3 flipbooks over 14 days at 15 calls a second: about three seconds of run.
PACED = {"rate_limits": [{"calls": 15, "seconds": 1}]}


def snap(resolved: int, to_fetch: int, elapsed: float, **kw: float) -> Snapshot:
    return Snapshot(
        resolved=resolved,
        to_fetch=to_fetch,
        failed=int(kw.get("failed", 0)),
        calls=int(kw.get("calls", resolved)),
        held_seconds=kw.get("held", 0.0),
        elapsed=elapsed,
    )


def test_the_eta_is_never_below_what_the_limits_allow() -> None:
    # 600 left at 60/min is at least 9 min 59 s, however fast the first units went.
    assert eta_seconds(snap(60, 660, 1.0), PER_MINUTE) == 599 // 60 * 60
    # Slower than the limits: the pace says more.
    assert eta_seconds(snap(10, 20, 100.0), PER_MINUTE) == 100.0
    assert eta_seconds(snap(0, 120, 0.0), PER_MINUTE) == 60.0


def test_a_progress_line_says_it_all() -> None:
    line = describe(snap(1234, 365_000, 1234.0, failed=2, held=600.0), PER_MINUTE)
    assert line == (
        "1,234/365,000 units (0.3 %), 2 failed; 1.00 calls/s; held back by the rate limit"
        " 10 min 0 s; ETA 101 h 2 min"
    )
    assert describe(snap(5, 5, 2.0), PER_MINUTE).endswith("ETA done")


def _api(simulator: SimulatorThread) -> dict[str, object]:
    return {"base_url": simulator.base_url, "timeout_seconds": 5, **PACED}


def test_off_a_terminal_progress_is_plain_lines(
    job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    path = job_file(api=_api(simulator))
    done = run_cli("run", str(path), "--progress-every", "0.5", env=env)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if " progress: " in line]
    assert len(lines) >= 2, done.stderr
    assert all(re.search(r"progress: [\d,]+/33 units \(.*; ETA ", line) for line in lines)
    assert not CONTROL.search(done.stderr)
    quiet = run_cli("run", str(job_file(api=_api(simulator))), "--refresh", "-q", env=env)
    assert " progress: " not in quiet.stderr  # -q: warnings and errors only


def test_on_a_terminal_progress_is_a_live_display(
    job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    path = job_file(api=_api(simulator))
    main, child = pty.openpty()
    run = subprocess.Popen(
        [sys.executable, "-m", "harvester", "run", str(path)],
        env={**env, "COLUMNS": "200", "TERM": "xterm"},
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
    assert run.wait(30) == 0
    text = screen.decode("utf-8", "replace")
    assert "\x1b[" in text  # drawn with terminal control sequences, redrawn in place
    frames = re.findall(r"harvesting: ([\d,]+)/33 units .*?ETA ([^\r\n\x1b]+)", text)
    assert len({done for done, _ in frames}) >= 2, text[-2000:]  # it moved
    assert re.search(r"harvested in [^:]+: 33/33 units \(100\.0 %\)", text)
    assert "finished: 33 units fetched and committed" in text  # the summary still follows
