"""Fixtures named for what they give: a running simulator, a job file, an output folder,
the credentials' environment, and the exact dataset a job must produce."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import settings

from harvester.job.location import Location
from harvester.job.model import Job
from harvester.job.parse import load_job
from harvester.lake.dataset import read_dataset
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from harvester.model import Clock, RateLimit, Unit, is_complete
from harvester.pacing.protocol import BUDGET_DIR_ENV
from harvester.plan.windows import iter_units
from harvester.simulator import SimulatorConfig, SimulatorThread, expected_stats
from harvester.state.store import DONE, StateStore
from tests.redis_server import RedisServer, redis_server

# In CI the property tests replay the same examples every run: a failure there is reproducible,
# and new ground is broken locally (run them with --hypothesis-seed=random values).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Distinctive values, so a grep of everything the harvester printed or wrote can find a leak.
API_KEY = "KEY-5f1c-harvest-test-9d2e"
API_SECRET = "SECRET-77ab-harvest-test-04c1"
SIM_LIMITS = (RateLimit(200, 1.0), RateLimit(5000, 60.0))
START, END = date(2026, 3, 1), date(2026, 3, 14)
HASHES = ("d3m0h45h", "x9y8z7", "f1ipb00k")


@pytest.fixture(autouse=True)
def budget_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own host budget files: parallel tests against separate simulators on the
    same key must not share one budget (and nothing lands in the user's directories)."""
    path = tmp_path / "budget"
    monkeypatch.setenv(BUDGET_DIR_ENV, str(path))
    return path


@pytest.fixture
def redis_db(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, with its own folder; stopped after."""
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """The simulator's settings: our test key, generous limits, a little latency."""
    return SimulatorConfig(
        seed=7, keys={API_KEY: API_SECRET}, rate_limits=SIM_LIMITS, latency=(0.0, 0.003)
    )


@pytest.fixture
def simulator(sim_config: SimulatorConfig) -> Iterator[SimulatorThread]:
    """A running simulator on a free loopback port."""
    with SimulatorThread(sim_config) as sim:
        yield sim


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """Where the job writes (not created: the harvester must create it)."""
    return tmp_path / "output"


@pytest.fixture
def env() -> dict[str, str]:
    """The environment a run gets: the credentials and nothing of ours else."""
    return {**os.environ, "FLIPSNACK_API_KEY": API_KEY, "FLIPSNACK_API_SECRET": API_SECRET}


def job_dict(base_url: str, output: Path, **overrides: Any) -> dict[str, Any]:
    """A valid job against ``base_url``; ``overrides`` replace top-level keys."""
    job: dict[str, Any] = {
        "api": {
            "base_url": base_url,
            "timeout_seconds": 5,
            "rate_limits": [{"calls": r.calls, "seconds": r.seconds} for r in SIM_LIMITS],
        },
        "concurrency": 4,
        "retry": {"attempts": 6, "max_backoff_seconds": 0.05},
        "granularity": "day",
        "output": str(output),
        "start": START.isoformat(),
        "end": END.isoformat(),
        "collections": [
            {"hash": HASHES[0]},
            {"hash": HASHES[1], "start": "2026-03-05", "end": "2026-03-20"},
            {"hash": HASHES[2], "end": "2026-03-03"},
        ],
    }
    job.update(overrides)
    return job


@pytest.fixture
def job_file(tmp_path: Path, simulator: SimulatorThread, output_dir: Path) -> Callable[..., Path]:
    """Write a job file against the simulator; keyword arguments replace top-level keys."""
    counter = iter(range(1000))

    def write(**overrides: Any) -> Path:
        path = tmp_path / f"job{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(job_dict(simulator.base_url, output_dir, **overrides)))
        return path

    return write


def expected_rows(
    job: Job, config: SimulatorConfig
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The exact page and collection rows (without fetched_at) a complete run must write.

    A collection row: hash, start, end, impressions, views, time_spent, downloads, complete,
    pages_requested, page_count."""
    pages: list[tuple[Any, ...]] = []
    collections: list[tuple[Any, ...]] = []
    for unit in iter_units(job):
        data = expected_stats(
            unit.collection_hash, unit.start, unit.end, config, page_stats=job.page_stats
        )
        key = (unit.collection_hash, unit.start, unit.end)
        figures = (data["impressions"], data["views"], data["time_spent"], data["downloads"])
        complete = is_complete(job.granularity, unit.start, unit.end)
        count = len(data.get("pages", []))
        collections.append((*key, *figures, complete, job.page_stats, count))
        for page in data.get("pages", []) if job.page_stats else []:
            pages.append((*key, page["page"], page["views"], page["clicks"], page["time_spent"]))
    return sorted(pages), sorted(collections)


def actual_rows(output: Path | Location) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What the datasets under ``output`` hold (without fetched_at), read back with pyarrow."""

    def rows(name: str) -> list[tuple[Any, ...]]:
        table = read_dataset(output, name).drop(["fetched_at", "account"])
        return sorted(tuple(r.values()) for r in table.to_pylist())

    return rows(PAGE_STATS), rows(COLLECTION_STATS)


def assert_complete(job_path: Path, config: SimulatorConfig) -> None:
    """The job's datasets hold exactly the expected rows: no more, no fewer, no duplicates."""
    job = load_job(job_path)
    assert actual_rows(job.output) == expected_rows(job, config)


def clock_on(day: date, hour: int = 3) -> Clock:
    """The real clock moved to ``day`` (from ``hour`` o'clock UTC on): a run "on that night",
    whose answers are stamped that day (so finality follows it), with real sleeps."""
    started = time.monotonic()
    at = datetime.combine(day, dt_time(hour), UTC)
    return Clock(now=lambda: at + timedelta(seconds=time.monotonic() - started))


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> Any:
    """Run ``python -m harvester`` in a subprocess; return the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "harvester", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def done_among(store: StateStore, units: list[Unit]) -> set[Unit]:
    """Which of ``units`` the state holds as done for exactly their window."""
    return {
        u
        for u, s in store.lookup(units).items()
        if s.status == DONE and (s.start, s.end) == (u.start, u.end)
    }
