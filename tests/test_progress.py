"""Progress: a live display on a terminal, plain lines off it, and an honest ETA."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.model import RateLimit
from harvester.pacing.limiter import RateLimiter, WindowUse
from harvester.run.progress import Snapshot, describe, eta_seconds, least_seconds, schedule_end
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import run_cli
from tests.test_ratelimit import FakeTime

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
        floor_seconds=kw.get("floor", 0.0),
    )


def _windows(*limits: RateLimit, recent: tuple[float, ...] = ()) -> tuple[WindowUse, ...]:
    return tuple(WindowUse(r.calls, r.seconds, tuple(recent[-r.calls :]), 0, 0.0) for r in limits)


def test_the_eta_is_never_below_what_the_limits_allow() -> None:
    # 600 left at 5/s and 60/min: nine full minutes, then the last 60 calls at 5 a second
    # (11 s more), however fast the first units went.
    floor = schedule_end(600, _windows(*PER_MINUTE), 0.0)
    assert floor == 9 * 60 + 11
    assert eta_seconds(snap(60, 660, 1.0, floor=floor)) == floor
    # Slower than the limits: the pace says more.
    assert eta_seconds(snap(10, 20, 100.0, floor=9.0)) == 100.0
    assert eta_seconds(snap(0, 120, 0.0, floor=60.0)) == 60.0


def test_the_eta_counts_the_calls_already_made_in_each_window() -> None:
    # The minute window spent a second ago: the next 61 calls start at 59 s and at 119 s,
    # where a count of the calls left alone says 1 min.
    now = 1000.0
    spent = tuple(now - 1.0 for _ in range(60))
    assert schedule_end(61, _windows(*PER_MINUTE), now) - now == 60.0
    assert schedule_end(61, _windows(*PER_MINUTE, recent=spent), now) - now == 119.0
    # Three calls in the second window: two more fit now, the third waits for the first.
    recent = (now - 0.5, now - 0.4, now - 0.3)
    assert schedule_end(3, _windows(RateLimit(5, 1.0), recent=recent), now) - now == 0.5
    assert schedule_end(0, _windows(*PER_MINUTE, recent=spent), now) == now


@settings(max_examples=60, deadline=None)
@given(
    limits=st.lists(
        st.builds(
            RateLimit,
            st.integers(1, 12),
            st.sampled_from([0.25, 1.0, 1.05, 3.7, 10.0, 60.6]),
        ),
        min_size=1,
        max_size=3,
    ),
    gaps=st.lists(st.floats(0.0, 2.0), max_size=40),
    calls=st.integers(0, 300),
    workers=st.integers(1, 8),
)
async def test_the_eta_is_when_the_limiter_admits_the_last_call(
    limits: list[RateLimit], gaps: list[float], calls: int, workers: int
) -> None:
    # A real limiter on a virtual clock: some calls made at random moments, then `calls` more
    # as fast as it admits them; the last admission is when schedule_end said, exactly.
    time = FakeTime()
    limiter = RateLimiter(limits, clock=time.clock, sleep=time.sleep, margin=lambda s: 0.0)
    for gap in gaps:
        time.now += gap
        await limiter.acquire()
    said = schedule_end(calls, limiter.window_use(), time.now)
    starts = [time.now]
    remaining = iter(range(calls))

    async def worker() -> None:
        for _ in remaining:
            await limiter.acquire()
            starts.append(time.now)

    await asyncio.gather(*(worker() for _ in range(workers)))
    assert said == pytest.approx(max(starts), abs=1e-6)


def test_the_slowest_budget_sets_the_eta_and_one_key_is_one_budget() -> None:
    now = 0.0
    window = (RateLimit(10, 10.0),)
    busy = _windows(*window, recent=tuple(float(-i) / 10 for i in range(10)))
    idle = _windows(*window)
    # Account a: 10 calls left behind a full window (the newest sent now); b: 5, a free one.
    assert least_seconds([(10, [busy]), (5, [idle])], now) == pytest.approx(10.0)
    # Two accounts on one key: 5 calls left in all, the key's window full from both; the
    # fifth waits for the fifth oldest send (-0.2 s).
    half = _windows(*window, recent=tuple(float(-i) / 10 for i in range(5)))
    assert least_seconds([(5, [half, half])], now) == pytest.approx(9.8)
    assert least_seconds([(5, [half])], now) == 0.0
    assert least_seconds([], now) == 0.0


def test_a_progress_line_says_it_all() -> None:
    line = describe(snap(1234, 365_000, 1234.0, failed=2, held=600.0, floor=364_200.0))
    assert line == (
        "1,234/365,000 units (0.3 %), 2 failed; 1.00 calls/s; held back by the rate limit"
        " 10 min 0 s (49 % of the run); ETA 101 h 10 min"
    )
    assert describe(snap(5, 5, 2.0)).endswith("ETA done")
    # The share never passes the run, whatever the figures say.
    assert snap(1, 2, 10.0, held=25.0).held_share == 1.0


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


TWO_KEYS = {
    "a": ("KEY-acct-a-51c2", "SECRET-acct-a-8e1f"),
    "b": ("KEY-acct-b-77d0", "SECRET-acct-b-2b9a"),
}
SLOW = RateLimit(8, 4.0)  # per key: 24 units an account take three windows, about 8 s


def _eta(text: str) -> float:
    """``1 min 5 s`` → 65."""
    parts = dict((unit, int(n)) for n, unit in re.findall(r"(\d+) (h|min|s)\b", text))
    return 3600.0 * parts.get("h", 0) + 60.0 * parts.get("min", 0) + parts.get("s", 0)


def _timed_lines(args: list[str], env: dict[str, str]) -> tuple[int, list[tuple[float, str]]]:
    """Run the CLI; each stderr line with the moment it arrived."""
    run = subprocess.Popen(
        [sys.executable, "-m", "harvester", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stderr is not None
    lines = [(time.monotonic(), line.rstrip("\n")) for line in run.stderr]
    return run.wait(60), lines


def test_with_several_accounts_the_eta_and_the_held_share_tell_the_truth(
    tmp_path: Path, env: dict[str, str]
) -> None:
    import json

    import yaml

    config = SimulatorConfig(
        seed=2, keys=dict(TWO_KEYS.values()), rate_limits=(SLOW,), latency=(0.0, 0.005)
    )
    accounts = []
    for name, (key, secret) in TWO_KEYS.items():
        env = {**env, f"{name.upper()}_KEY": key, f"{name.upper()}_SECRET": secret}
        accounts.append(
            {
                "name": name,
                "key_env": f"{name.upper()}_KEY",
                "secret_env": f"{name.upper()}_SECRET",
                "collections": [f"{name}0c0ll1", f"{name}0c0ll2"],
            }
        )
    with SimulatorThread(config) as sim:
        job = {
            "api": {
                "base_url": sim.base_url,
                "timeout_seconds": 5,
                "rate_limits": [{"calls": SLOW.calls, "seconds": SLOW.seconds}],
            },
            "concurrency": 8,
            "output": str(tmp_path / "output"),
            "start": "2026-03-01",
            "end": "2026-03-12",
            "accounts": accounts,
        }
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        code, lines = _timed_lines(["run", str(path), "--progress-every", "0.5"], env)
    assert code == 0, "\n".join(line for _, line in lines)
    finished = next(t for t, line in lines if line.startswith("finished: 48 units"))
    progress = [
        (t, line) for t, line in lines if " progress: " in line and not line.endswith("ETA done")
    ]
    assert len(progress) >= 4, lines
    for arrived, line in progress:
        # The ETA is a floor: the windows cannot let the run end sooner. Counting each
        # account's calls already in its window, it is never far below the time really left
        # (the pace of the first bursts alone said 1 s with 7 s to go).
        left = finished - arrived
        assert _eta(line.rpartition("ETA ")[2]) >= left - 2.5, (line, left)
    # Held back while the first waits still last (none can end before 4 s): counted already.
    first_share = re.search(r"\((\d+) % of the run\)", progress[0][1])
    assert first_share is not None and int(first_share.group(1)) > 0, progress[0][1]
    # Both accounts wait side by side for most of the run: their union, not their sum.
    report = json.loads((tmp_path / "output" / "_state" / "last-run.json").read_text())
    held = report["rate_limit_held_seconds"]
    assert report["elapsed_seconds"] * 0.5 < held <= report["elapsed_seconds"]
    per_account = [a["rate_limit_held_seconds"] for a in report["by_account"].values()]
    assert sum(per_account) > report["elapsed_seconds"]  # what the old figure summed
    summary = next(line for _, line in lines if line.startswith("rate limit: "))
    assert re.match(
        r"rate limit: requests held back [\d.]+ s \(\d+%\) of the [\d.]+ s run", summary
    )
