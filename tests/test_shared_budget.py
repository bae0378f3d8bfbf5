"""One budget per key, whoever spends it: the host's budget file and Redis, in process and
across real harvester processes against one recording simulator."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester.errors import BudgetUnavailable
from harvester.model import RateLimit
from harvester.pacing.file_store import FileStore
from harvester.pacing.protocol import BUDGET_DIR_ENV, budget_digest, budget_dir, windows_of
from harvester.pacing.redis_store import RedisStore
from harvester.pacing.shared import SharedBudget
from tests.benchmarks.budget import binding, steady_use, units_for
from tests.benchmarks.common import (
    API_KEY,
    RecordingSimulator,
    harvester_env,
    sim_config,
    write_job,
)
from tests.redis_server import RedisServer, free_port

LIMITS = (RateLimit(20, 0.5), RateLimit(60, 2.0))  # the 2 s window binds: 30 calls/s
LATENCY = (0.05, 0.3)
CONCURRENCY = 8  # each process alone could spend the whole budget
FLOOR = 0.9


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _file_budget(path: Path, time: FakeTime, *limits: RateLimit, lease: float = 30.0) -> Any:
    store = FileStore(path, windows_of(limits), lease_seconds=lease, clock=time.clock)
    return SharedBudget(store, limits, clock=time.clock, sleep=time.sleep)


# --- the host's budget file, on a fake clock -----------------------------------------------------


def test_the_budget_file_is_named_by_a_hash_never_the_key(tmp_path: Path) -> None:
    digest = budget_digest("https://api.example/v1/", API_KEY)
    assert len(digest) == 32 and API_KEY not in digest
    assert digest != budget_digest("https://other.example/v1/", API_KEY)
    assert budget_dir({BUDGET_DIR_ENV: str(tmp_path)}) == tmp_path
    runtime = tmp_path / "run"
    runtime.mkdir()
    assert budget_dir({"XDG_RUNTIME_DIR": str(runtime)}) == runtime / "harvester" / "budget"
    cache = budget_dir({"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert cache == tmp_path / "cache" / "harvester" / "budget"


async def test_two_processes_on_one_file_share_every_window(tmp_path: Path) -> None:
    time = FakeTime()
    limits = (RateLimit(5, 1.0), RateLimit(12, 10.0))
    path = tmp_path / "budget.sqlite"
    budgets = [_file_budget(path, time, *limits), _file_budget(path, time, *limits)]
    starts: list[float] = []

    async def spend(budget: SharedBudget, calls: int) -> None:
        for _ in range(calls):
            slot = await budget.reserve()
            starts.append(time.now)
            await slot.astamp()

    await asyncio.gather(spend(budgets[0], 12), spend(budgets[1], 12))
    starts.sort()
    for calls, seconds in windows_of(limits):
        for i in range(len(starts) - calls):
            assert starts[i + calls] - starts[i] >= seconds - 1e-9
    assert budgets[0].calls + budgets[1].calls == 24
    assert starts[-1] >= 10.0  # the third dozen could not start before the 10 s window moved


async def test_a_pause_after_31_holds_every_process_on_the_key(tmp_path: Path) -> None:
    time = FakeTime()
    path = tmp_path / "budget.sqlite"
    first, second = (
        _file_budget(path, time, RateLimit(5, 1.0)),
        _file_budget(path, time, RateLimit(5, 1.0)),
    )
    assert first.pause(first.window_for_code(31)) is True
    await asyncio.sleep(0)  # the pause reaches the file
    slot = await second.reserve()
    assert time.now >= 1.0 and second.waits == 1
    await slot.afree()
    await first.aclose()
    await second.aclose()


async def test_an_unsent_place_holds_until_stamped_or_its_lease_lapses(tmp_path: Path) -> None:
    time = FakeTime()
    path = tmp_path / "budget.sqlite"
    crashed = _file_budget(path, time, RateLimit(1, 1.0), lease=3.0)
    other = _file_budget(path, time, RateLimit(1, 1.0), lease=3.0)
    await crashed.reserve()  # never stamped, never freed: its process died mid-request
    slot = await other.reserve()
    assert 3.0 <= time.now < 3.1  # polled, in short sleeps, until the lease lapsed
    await slot.astamp()
    freed = await crashed.reserve()
    assert time.now >= 3.0 + 1.0  # the stamp counts in the window
    await freed.afree()
    third = await other.reserve()  # a freed place is free at once
    assert time.now < 4.1
    await third.afree()


def test_a_budget_file_that_cannot_be_written_stops_before_any_call(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(BudgetUnavailable) as caught:
        FileStore(blocked / "budget.sqlite", [(5, 1.0)], lease_seconds=5.0)
    assert caught.value.exit_code == 2


# --- Redis, on Redis's clock ----------------------------------------------------------------------


async def test_redis_budgets_share_every_window_on_redis_time(redis_db: RedisServer) -> None:
    limits = (RateLimit(3, 0.3), RateLimit(5, 1.0))
    digest = budget_digest("http://127.0.0.1/", API_KEY)
    stores = [await RedisStore.connect(redis_db.url, digest, windows_of(limits), 5.0) for _ in "ab"]
    budgets = [SharedBudget(store, limits) for store in stores]
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def spend(budget: SharedBudget) -> None:
        for _ in range(5):
            slot = await budget.reserve()
            starts.append(loop.time())
            await slot.astamp()

    await asyncio.gather(*(spend(b) for b in budgets))
    starts.sort()
    for calls, seconds in windows_of(limits):
        for i in range(len(starts) - calls):
            assert starts[i + calls] - starts[i] >= seconds - 0.01  # two clocks, µs apart

    import redis.asyncio

    client = redis.asyncio.from_url(redis_db.url)
    keys = sorted(k.decode() for k in await client.keys("*"))
    assert keys == [f"harvester:budget:{{{digest}}}:starts"]  # no lease left: its set is gone
    scores = [s for _, s in await client.zrange(keys[0], 0, -1, withscores=True)]
    seconds, micros = await client.time()
    assert all(seconds + micros / 1e6 - 2.0 < s <= seconds + micros / 1e6 for s in scores)
    await client.aclose()
    for budget in budgets:
        await budget.aclose()


async def test_a_redis_pause_holds_every_host_on_the_key(redis_db: RedisServer) -> None:
    limits = (RateLimit(5, 1.0),)
    digest = budget_digest("http://127.0.0.1/", API_KEY)
    first, second = [
        SharedBudget(
            await RedisStore.connect(redis_db.url, digest, windows_of(limits), 5.0), limits
        )
        for _ in "ab"
    ]
    loop = asyncio.get_running_loop()
    first.pause(0.5)
    await asyncio.sleep(0.05)
    began = loop.time()
    slot = await second.reserve()
    assert loop.time() - began >= 0.4
    await slot.afree()
    await first.aclose()
    await second.aclose()


async def test_a_redis_lease_holds_its_place_until_it_lapses(redis_db: RedisServer) -> None:
    digest = budget_digest("http://127.0.0.1/", API_KEY)
    crashed = await RedisStore.connect(redis_db.url, digest, [(1, 1.0)], 0.3)
    other = await RedisStore.connect(redis_db.url, digest, [(1, 1.0)], 0.3)
    assert isinstance(await crashed.reserve(), str)  # never stamped: its process died
    assert await other.reserve() == (math.inf, False)  # the unsent call fills the window
    await asyncio.sleep(0.35)
    lease = await other.reserve()
    assert isinstance(lease, str)
    await other.stamp(lease)
    delay, exact = await other.reserve()
    assert 0.9 < delay <= 1.0 + 0.05 and exact  # the stamp, on Redis's clock, binds the window
    await crashed.close()
    await other.close()


async def test_an_unreachable_redis_fails_before_any_call() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BudgetUnavailable) as caught:
        await RedisStore.connect(url, "0" * 32, [(5, 1.0)], 5.0)
    assert caught.value.exit_code == 2
    assert "cannot be reached" in str(caught.value)


# --- real harvester processes on one key ---------------------------------------------------------


def _jobs(workdir: Path, base_url: str, processes: int, **api: Any) -> list[Path]:
    """One job per process, the same key, together enough units for four steady periods."""
    units = units_for(binding(LIMITS), 4)
    days = 10
    collections = math.ceil(units / processes / days)
    jobs = []
    for i in range(processes):
        job = write_job(
            workdir / f"job{i}.yaml",
            base_url,
            workdir / f"out{i}",
            collections=collections,
            days=days,
            limits=LIMITS,
            concurrency=CONCURRENCY,
            page_stats=False,
        )
        if api:
            raw = yaml.safe_load(job.read_text())
            raw["api"].update(api)
            job.write_text(yaml.safe_dump(raw))
        jobs.append(job)
    return jobs


def _host(workdir: Path, name: str) -> dict[str, str]:
    """The environment of a process on a host of its own: home, temp and cache dirs."""
    env = harvester_env()
    env.pop(BUDGET_DIR_ENV, None)
    for var, sub in (
        ("HOME", "home"),
        ("TMPDIR", "tmp"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_RUNTIME_DIR", "run"),
    ):
        path = workdir / name / sub
        path.mkdir(parents=True)
        env[var] = str(path)
    return env


def _run_together(jobs: list[Path], envs: list[dict[str, str]]) -> list[tuple[int, str]]:
    """``harvester run`` for every job at once; (exit code, stderr) of each."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "harvester", "run", str(job), "-q"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for job, env in zip(jobs, envs, strict=True)
    ]
    return [(child.wait(180), child.communicate()[1]) for child in children]


def _shared_run(workdir: Path, processes: int, envs: list[dict[str, str]], **api: Any) -> None:
    with RecordingSimulator(sim_config(rate_limits=LIMITS, latency=LATENCY)) as sim:
        jobs = _jobs(workdir, sim.base_url, processes, **api)
        ends = _run_together(jobs, envs)
        arrivals = sorted(sim.arrivals())
        codes = sim.counters()["codes"]
    assert [code for code, _ in ends] == [0] * processes, [err[-2000:] for _, err in ends]
    violations = codes.get("31", 0) + codes.get("32", 0)
    assert violations == 0, f"{violations} answers 31/32 at the simulator"
    limit = binding(LIMITS)
    periods, rate = steady_use(arrivals, limit)
    use = rate / (limit.calls / limit.seconds)
    assert use >= FLOOR, f"combined {rate:.1f} calls/s over {periods} periods: use {use:.3f}"
    for job in jobs:
        report = yaml.safe_load(
            (
                Path(yaml.safe_load(job.read_text())["output"]) / "_state" / "last-run.json"
            ).read_text()
        )
        assert report["rate_limit_answers"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 3])
def test_processes_on_one_host_share_the_key_budget(
    tmp_path: Path, budget_dir: Path, processes: int
) -> None:
    _shared_run(tmp_path, processes, [harvester_env() for _ in range(processes)])
    files = sorted(p.name for p in budget_dir.glob("*.sqlite"))
    assert len(files) == 1 and API_KEY not in files[0]
    assert API_KEY.encode() not in (budget_dir / files[0]).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 3])
def test_hosts_share_the_key_budget_through_redis(
    tmp_path: Path, redis_db: RedisServer, processes: int
) -> None:
    envs = [_host(tmp_path, f"host{i}") for i in range(processes)]
    _shared_run(tmp_path, processes, envs, rate_budget=redis_db.url)
    for i in range(processes):  # the budget was Redis's: no host wrote a budget file
        assert not list((tmp_path / f"host{i}").rglob("*.sqlite"))


def test_an_unreachable_redis_stops_the_run_before_any_call(
    tmp_path: Path, job_file: Any, simulator: Any, env: dict[str, str]
) -> None:
    job = job_file(
        api={
            "base_url": simulator.base_url,
            "rate_limits": [{"calls": 50, "seconds": 1}],
            "rate_budget": f"redis://127.0.0.1:{free_port()}/0",
        }
    )
    from tests.conftest import run_cli

    result = run_cli("run", str(job), env=env)
    assert result.returncode == 2, result.stderr
    assert "rate budget" in result.stderr and "cannot be reached" in result.stderr
    assert simulator.counters()["requests"] == 0


def test_redis_lost_mid_run_stops_it_with_committed_work_kept(
    tmp_path: Path, redis_db: RedisServer, job_file: Any, simulator: Any, env: dict[str, str]
) -> None:
    job = job_file(
        api={
            "base_url": simulator.base_url,
            "rate_limits": [{"calls": 4, "seconds": 0.5}],
            "rate_budget": redis_db.url,
        },
        concurrency=2,
        granularity="day",
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "harvester", "run", str(job), "-q"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    import time

    deadline = time.monotonic() + 60
    while simulator.counters()["requests"] < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    redis_db.stop()
    code = child.wait(60)
    stderr = child.communicate()[1]
    assert code == 1, stderr
    assert "cannot be reached" in stderr
    output = Path(yaml.safe_load(job.read_text())["output"])
    report = yaml.safe_load((output / "_state" / "last-run.json").read_text())
    assert report["stopped_by"] == "BudgetUnavailable"
    assert report["units_committed"] > 0
    assert report["units_fetched"] == report["units_committed"]
    assert os.environ.get(BUDGET_DIR_ENV)  # the conftest's, untouched
