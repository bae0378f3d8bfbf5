"""``harvester plan``: units, calls and the least time the rate limits allow, with no request."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
import yaml

from harvester.job.parse import load_job
from harvester.model import RateLimit
from harvester.ops.estimate import plan_job
from harvester.pacing.limiter import format_duration, shortest_duration
from harvester.plan.windows import iter_units
from harvester.run.options import RunOptions
from harvester.run.pipeline import harvest
from harvester.simulator import SimulatorThread
from tests.conftest import run_cli

JobFile = Callable[..., Path]
PER_MINUTE = (RateLimit(5, 1.0), RateLimit(60, 60.0))


@pytest.mark.parametrize(
    ("calls", "limits", "seconds", "binding"),
    [
        (0, PER_MINUTE, 0.0, None),
        (1, PER_MINUTE, 0.0, RateLimit(60, 60.0)),
        (60, PER_MINUTE, 11.0, RateLimit(5, 1.0)),  # one minute's budget: the burst binds
        (61, PER_MINUTE, 60.0, RateLimit(60, 60.0)),
        (365_000, PER_MINUTE, 6083 * 60.0, RateLimit(60, 60.0)),  # 101 h 23 min
        (365_000, (RateLimit(3, 1.0), RateLimit(30, 60.0)), 12166 * 60.0, RateLimit(30, 60.0)),
        (1000, (RateLimit(50, 1.0), RateLimit(300, 10.0)), 30.0, RateLimit(300, 10.0)),
        (10, (), 0.0, None),
    ],
)
def test_shortest_duration(
    calls: int, limits: tuple[RateLimit, ...], seconds: float, binding: RateLimit | None
) -> None:
    assert shortest_duration(calls, limits) == (seconds, binding)


def test_format_duration() -> None:
    assert format_duration(6083 * 60.0) == "101 h 23 min"
    assert format_duration(250.2) == "4 min 11 s"
    assert format_duration(3.0) == "3 s"


@pytest.mark.parametrize("granularity", ["day", "week", "month", "range"])
def test_the_plan_of_a_partly_done_job(
    granularity: str, job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    path = job_file(granularity=granularity, start="2026-03-01", end="2026-04-09")
    job = load_job(path)
    units = list(iter_units(job))
    first = harvest(job, RunOptions(end=date(2026, 3, 4)), env)  # a part of it, by calendar
    done = first.units_committed
    assert 0 < done < len(units)
    simulator.reset_counters()
    plan = plan_job(job, RunOptions())
    (account,) = plan.accounts
    assert (account.units, account.done, account.to_fetch) == (len(units), done, len(units) - done)
    assert plan.calls == len(units) - done
    limits = job.api.rate_limits
    assert plan.seconds == shortest_duration(len(units) - done, limits)[0]
    as_json = json.loads(run_cli("plan", str(path), "--json", env={}).stdout)
    assert as_json["calls"] == plan.calls and as_json["accounts"][0]["done"] == done
    assert simulator.counters()["requests"] == 0
    # The run that follows fetches exactly what the plan said.
    assert harvest(job, RunOptions(), env).units_committed == plan.calls


def test_a_backfill_longer_than_a_day_is_warned_about(tmp_path: Path) -> None:
    job = {
        "api": {"base_url": "https://api.flipsnack.com/v1/"},
        "output": str(tmp_path / "out"),
        "start": "2025-01-01",
        "end": "2025-12-31",
        "collections": [f"c{i:04d}" for i in range(1000)],
    }
    path = tmp_path / "backfill.yaml"
    path.write_text(yaml.safe_dump(job))
    done = run_cli("plan", str(path), env={})  # no credentials needed
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "365,000 units in the job, 0 done, 365,000 to fetch now" in lines[1]
    assert lines[2] == "total: 365,000 calls — at least 101 h 23 min at 60 calls/min"
    assert lines[3].startswith("warning: this takes more than a day")
    assert not (tmp_path / "out").exists()


def test_discover_plans_from_the_collections_the_last_run_listed(
    job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    path = job_file(discover=True, collections=[], start="2026-03-01", end="2026-03-02")
    before = run_cli("plan", str(path), env={})
    assert "no collection list recorded yet" in before.stdout
    harvest(load_job(path), RunOptions(end=date(2026, 3, 1)), env)
    simulator.reset_counters()
    after = run_cli("plan", str(path), env={})
    assert "discover: using the 3 collections the run of" in after.stdout
    assert "6 units in the job, 3 done, 3 to fetch now" in after.stdout
    assert simulator.counters()["requests"] == 0
