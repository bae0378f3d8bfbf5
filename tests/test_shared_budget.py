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
from urllib.parse import urlsplit

import pytest
import yaml

from harvester.api import canonical_endpoint
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
from tests.conftest import API_KEY as TEST_KEY
from tests.redis_server import RedisServer, free_port

# The 2.5 s window binds (24 calls/s); the 0.5 s one, each call holding its place for its
# round trip too, allows about 28/s.
LIMITS = (RateLimit(20, 0.5), RateLimit(60, 2.5))
LATENCY = (0.05, 0.3)
CONCURRENCY = 8  # each process alone could spend the whole budget
TIMEOUT = 3  # seconds: a lost lease is assumed in flight until it would lapse (5 s)
FLOOR = 0.9


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0  # long after boot: a new budget has no earlier boot to fear

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
    assert digest != budget_digest("https://api.example/v2/", API_KEY)
    assert digest != budget_digest("https://api.example/v1/", API_KEY + "x")


@pytest.mark.parametrize(
    "spelling",
    [
        "https://api.example/v1",
        "https://API.Example/v1/",
        "HTTPS://api.example:443/v1//",
        "  https://api.example/v1/#top",
    ],
)
def test_every_spelling_of_one_endpoint_names_one_budget(spelling: str) -> None:
    assert canonical_endpoint(spelling) == "https://api.example/v1/"
    assert budget_digest(spelling, API_KEY) == budget_digest("https://api.example/v1/", API_KEY)


def test_a_port_that_is_not_the_default_is_another_endpoint() -> None:
    assert canonical_endpoint("http://api.example:80/v1") == "http://api.example/v1/"
    assert canonical_endpoint("http://api.example:8080/v1") == "http://api.example:8080/v1/"
    assert canonical_endpoint("https://[::1]:443/") == "https://[::1]/"


def test_the_budget_folder_is_one_for_every_process_of_the_user(tmp_path: Path) -> None:
    import pwd

    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    expected = home / ".cache" / "harvester" / "budget"
    runtime = tmp_path / "run"
    runtime.mkdir()
    assert budget_dir({}) == expected  # cron: no XDG_RUNTIME_DIR, a bare environment
    login = {"XDG_RUNTIME_DIR": str(runtime), "XDG_CACHE_HOME": str(tmp_path), "HOME": "/x"}
    assert budget_dir(login) == expected  # a login shell, whatever it sets
    assert budget_dir({BUDGET_DIR_ENV: str(tmp_path)}) == tmp_path  # a service's own


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
            slot.mark_sent()
            await slot.aend()

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
    assert time.now >= 1001.0 and second.waits == 1
    await slot.aend()
    await first.aclose()
    await second.aclose()


async def test_a_dead_process_holds_its_place_until_its_lease_lapses(tmp_path: Path) -> None:
    time = FakeTime()
    path = tmp_path / "budget.sqlite"
    crashed = _file_budget(path, time, RateLimit(1, 1.0), lease=3.0)
    other = _file_budget(path, time, RateLimit(1, 1.0), lease=3.0)
    await crashed.reserve()  # never ended: its process died mid-request
    slot = await other.reserve()
    # Polled, in short sleeps, until the lease lapsed; then it counts as a call ended there.
    assert 1004.0 <= time.now < 1004.1
    slot.mark_sent()
    await slot.aend()
    ended = time.now
    freed = await crashed.reserve()
    assert time.now >= ended + 1.0  # the end counts in the window
    await freed.aend()  # never sent: nothing to count
    third = await other.reserve()  # a freed place is free at once
    assert time.now < ended + 1.1
    await third.aend()


async def _spend_now(budget: SharedBudget) -> None:
    slot = await budget.reserve()
    slot.mark_sent()
    await slot.aend()


async def test_a_budget_never_seen_here_starts_empty(tmp_path: Path) -> None:
    time = FakeTime()
    budget = _file_budget(tmp_path / "budget.sqlite", time, RateLimit(2, 10.0))
    await _spend_now(budget)
    await _spend_now(budget)
    assert time.now == 1000.0 and budget.waits == 0  # nothing was ever spent through it
    assert (tmp_path / "budget.known").exists()


async def test_a_budget_file_deleted_between_runs_starts_spent(tmp_path: Path) -> None:
    time = FakeTime()
    path = tmp_path / "budget.sqlite"
    first = _file_budget(path, time, RateLimit(2, 10.0), lease=3.0)
    await first.aclose()
    for leftover in tmp_path.glob("budget.sqlite*"):
        leftover.unlink()  # a logout, a cleaner: the calls it held are gone with it
    time.now = 2000.0
    budget = _file_budget(path, time, RateLimit(2, 10.0), lease=3.0)
    await _spend_now(budget)
    # As if the 10 s before had been spent in full: the first call waits the whole window.
    assert time.now >= 2000.0 + 10.0


async def test_a_budget_file_deleted_mid_run_is_noticed_and_rejoined(tmp_path: Path) -> None:
    time = FakeTime()
    path = tmp_path / "budget.sqlite"
    limit = RateLimit(3, 10.0)
    old = _file_budget(path, time, limit, lease=3.0)
    starts: list[float] = []

    async def spend(budget: SharedBudget, calls: int) -> None:
        for _ in range(calls):
            slot = await budget.reserve()
            starts.append(time.now)
            slot.mark_sent()
            await slot.aend()

    await spend(old, 3)  # the window is full until 1010 and a bit
    for leftover in tmp_path.glob("budget.sqlite*"):
        leftover.unlink()  # the folder is cleaned while the run goes on
    time.now = 1005.0
    newcomer = _file_budget(path, time, limit, lease=3.0)  # creates the new file
    await asyncio.gather(spend(newcomer, 3), spend(old, 3))  # old notices the new inode
    assert old.calls == 6 and newcomer.calls == 3
    starts.sort()
    # As the server counts: never more than 3 in 10 s. A new file that started empty would
    # have let the newcomer spend 3 more at 1005.
    assert all(starts[i + 3] - starts[i] >= 10.0 for i in range(len(starts) - 3)), starts
    assert _ident_of(path) == old._store._ident  # type: ignore[attr-defined]


def _ident_of(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


async def test_a_replaced_budget_file_gets_this_process_s_calls(tmp_path: Path) -> None:
    time = FakeTime()
    path = tmp_path / "budget.sqlite"
    limit = RateLimit(2, 10.0)
    first = _file_budget(path, time, limit)
    await _spend_now(first)
    await _spend_now(first)
    elsewhere = tmp_path / "other" / "budget.sqlite"
    fresh = _file_budget(elsewhere, time, limit)  # a file with no history at all...
    await fresh.aclose()
    os.replace(elsewhere, path)  # ...moved over ours
    time.now = 1001.0
    await _spend_now(first)  # joined the replacement, bringing its two calls of 1000
    assert time.now >= 1000.0 + 10.0


async def test_a_file_of_an_earlier_boot_never_waits_for_its_times(tmp_path: Path) -> None:
    time = FakeTime()
    path = tmp_path / "budget.sqlite"
    time.now = 432_000.0  # five days of uptime
    before = FileStore(path, [(5, 60.0)], lease_seconds=5.0, clock=time.clock, boot_id=str)
    for _ in range(5):
        lease = await before.reserve()
        assert isinstance(lease, str)
        await before.end(lease)
    await before.close()
    time.now = 300.0  # rebooted; the boot id cannot be read (boot_id=str gives "")
    after = FileStore(path, [(5, 60.0)], lease_seconds=5.0, clock=time.clock, boot_id=str)
    assert isinstance(await after.reserve(), str)  # no 120 h wait for times of another boot
    await after.close()


async def test_calls_of_an_earlier_boot_count_as_ended_at_boot(tmp_path: Path) -> None:
    time = FakeTime()
    path = tmp_path / "budget.sqlite"
    time.now = 500.0
    before = FileStore(path, [(5, 60.0)], lease_seconds=5.0, clock=time.clock, boot_id=lambda: "a")
    for _ in range(3):
        lease = await before.reserve()
        assert isinstance(lease, str)
        await before.end(lease)
    await before.close()
    time.now = 20.0  # rebooted 20 s ago: the three calls were made in the minute before
    after = FileStore(path, [(5, 60.0)], lease_seconds=5.0, clock=time.clock, boot_id=lambda: "b")
    for _ in range(2):
        lease = await after.reserve()
        assert isinstance(lease, str)
        await after.end(lease)
    delay, exact = await after.reserve()  # type: ignore[misc]
    assert delay == pytest.approx(60.0 - 20.0) and exact  # the three ended at boot, 0
    await after.close()


async def test_another_boot_id_drops_the_file_s_history(tmp_path: Path) -> None:
    time = FakeTime()
    path = tmp_path / "budget.sqlite"
    old = FileStore(path, [(1, 60.0)], lease_seconds=5.0, clock=time.clock, boot_id=lambda: "a")
    lease = await old.reserve()
    assert isinstance(lease, str)
    await old.end(lease)
    await old.close()
    time.now += 1.0
    same = FileStore(path, [(1, 60.0)], lease_seconds=5.0, clock=time.clock, boot_id=lambda: "a")
    assert not isinstance(await same.reserve(), str)  # the same boot: the call holds its window
    await same.close()
    other = FileStore(path, [(1, 60.0)], lease_seconds=5.0, clock=time.clock, boot_id=lambda: "b")
    assert isinstance(await other.reserve(), str)
    await other.close()


def test_a_budget_file_that_cannot_be_written_stops_before_any_call(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(BudgetUnavailable) as caught:
        FileStore(blocked / "budget.sqlite", [(5, 1.0)], lease_seconds=5.0)
    assert caught.value.exit_code == 2


# --- Redis, on Redis's clock ----------------------------------------------------------------------


async def _held_all_along(url: str, digest: str) -> None:
    """Tell Redis it has held this budget all along (``…:epoch``): a test's fresh server
    would otherwise count the time before it started as spent."""
    import redis.asyncio

    client = redis.asyncio.from_url(url)
    await client.set(f"harvester:budget:{{{digest}}}:epoch", "1")
    await client.aclose()


async def test_redis_budgets_share_every_window_on_redis_time(redis_db: RedisServer) -> None:
    limits = (RateLimit(3, 0.3), RateLimit(5, 1.0))
    digest = budget_digest("http://127.0.0.1/", API_KEY)
    await _held_all_along(redis_db.url, digest)
    stores = [await RedisStore.connect(redis_db.url, digest, windows_of(limits), 5.0) for _ in "ab"]
    budgets = [SharedBudget(store, limits) for store in stores]
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def spend(budget: SharedBudget) -> None:
        for _ in range(5):
            slot = await budget.reserve()
            starts.append(loop.time())
            slot.mark_sent()
            await slot.aend()

    await asyncio.gather(*(spend(b) for b in budgets))
    starts.sort()
    for calls, seconds in windows_of(limits):
        for i in range(len(starts) - calls):
            assert starts[i + calls] - starts[i] >= seconds - 0.01  # two clocks, µs apart

    import redis.asyncio

    client = redis.asyncio.from_url(redis_db.url)
    keys = sorted(k.decode() for k in await client.keys("*"))
    prefix = f"harvester:budget:{{{digest}}}"
    assert keys == [f"{prefix}:ends", f"{prefix}:epoch"]  # no lease left: its set is gone
    members = [m.decode() for m in await client.zrange(f"{prefix}:ends", 0, -1)]
    ended = [float(m.split(":")[1]) for m in members]
    seconds, micros = await client.time()
    assert ended == sorted(ended) and len(ended) == 5  # the last 5 kept: all a window needs
    assert all(seconds + micros / 1e6 - 3.0 < t <= seconds + micros / 1e6 for t in ended)
    await client.aclose()
    for budget in budgets:
        await budget.aclose()


async def test_a_redis_pause_holds_every_host_on_the_key(redis_db: RedisServer) -> None:
    limits = (RateLimit(5, 1.0),)
    digest = budget_digest("http://127.0.0.1/", API_KEY)
    await _held_all_along(redis_db.url, digest)
    first, second = [
        SharedBudget(
            await RedisStore.connect(redis_db.url, digest, windows_of(limits), 5.0), limits
        )
        for _ in "ab"
    ]
    loop = asyncio.get_running_loop()
    first.pause(0.5)
    await first.settle()
    began = loop.time()
    slot = await second.reserve()
    assert loop.time() - began >= 0.4
    await slot.aend()
    await first.aclose()
    await second.aclose()


async def test_a_redis_lease_holds_its_place_until_it_lapses(redis_db: RedisServer) -> None:
    digest = budget_digest("http://127.0.0.1/", API_KEY)
    await _held_all_along(redis_db.url, digest)
    crashed = await RedisStore.connect(redis_db.url, digest, [(1, 1.0)], 0.3)
    other = await RedisStore.connect(redis_db.url, digest, [(1, 1.0)], 0.3)
    assert isinstance(await crashed.reserve(), str)  # never ended: its process died
    delay, exact = await other.reserve()  # type: ignore[misc]
    assert 0 < delay <= 0.3 and not exact  # the live call fills the window until it lapses
    await asyncio.sleep(0.35)
    delay, exact = await other.reserve()  # type: ignore[misc]
    assert 0.6 < delay <= 1.0 and exact  # lapsed: counted as a call ended when it lapsed
    await asyncio.sleep(delay)
    lease = await other.reserve()
    assert isinstance(lease, str)
    await other.end(lease)
    delay, exact = await other.reserve()  # type: ignore[misc]
    assert 0.9 < delay <= 1.0 + 0.05 and exact  # the end, on Redis's clock, binds the window
    await crashed.close()
    await other.close()


async def test_a_restarted_redis_counts_what_it_lost_as_spent(redis_db: RedisServer) -> None:
    limits = (RateLimit(3, 1.0),)
    digest = budget_digest("http://127.0.0.1/", API_KEY)
    await _held_all_along(redis_db.url, digest)
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    before = SharedBudget(
        await RedisStore.connect(redis_db.url, digest, windows_of(limits), 0.5), limits
    )
    for _ in range(2):
        slot = await before.reserve()
        starts.append(loop.time())
        slot.mark_sent()
        await slot.aend()
    flying = await before.reserve()  # in flight while Redis restarts
    starts.append(loop.time())
    flying.mark_sent()
    redis_db.restart()  # empty: the three calls above are forgotten
    restarted = loop.time()
    await flying.aend()  # the first script after the restart finds the history gone
    after = SharedBudget(
        await RedisStore.connect(redis_db.url, digest, windows_of(limits), 0.5), limits
    )
    for _ in range(3):
        slot = await after.reserve()
        starts.append(loop.time())
        slot.mark_sent()
        await slot.aend()
    assert starts[3] >= restarted + 0.9  # as if the window before the restart were spent
    for i in range(len(starts) - 3):
        assert starts[i + 3] - starts[i] >= 1.0 - 0.01, starts
    await before.aclose()
    await after.aclose()


async def test_an_unreachable_redis_fails_before_any_call() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BudgetUnavailable) as caught:
        await RedisStore.connect(url, "0" * 32, [(5, 1.0)], 5.0)
    assert caught.value.exit_code == 2
    assert "cannot be reached" in str(caught.value)


# --- real harvester processes on one key ---------------------------------------------------------


def _jobs(
    workdir: Path,
    base_urls: str | list[str],
    processes: int,
    *,
    periods: int = 3,
    **api: Any,
) -> list[Path]:
    """One job per process, the same key, together enough units for ``periods`` steady
    periods; ``base_urls``: one for all, or one per process (spellings of one endpoint)."""
    units = units_for(binding(LIMITS), periods)
    days = 10
    collections = math.ceil(units / processes / days)
    urls = [base_urls] * processes if isinstance(base_urls, str) else base_urls
    jobs = []
    for i in range(processes):
        job = write_job(
            workdir / f"job{i}.yaml",
            urls[i],
            workdir / f"out{i}",
            collections=collections,
            days=days,
            limits=LIMITS,
            concurrency=CONCURRENCY,
            page_stats=False,
        )
        raw = yaml.safe_load(job.read_text())
        raw["api"].update({"timeout_seconds": TIMEOUT, **api})
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


def _spawn(job: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``harvester run JOB -q`` in a child."""
    return subprocess.Popen(
        [sys.executable, "-m", "harvester", "run", str(job), "-q"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(children: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    """(exit code, stderr) of every child, once it ends."""
    return [(child.wait(240), child.communicate()[1]) for child in children]


def _run_together(jobs: list[Path], envs: list[dict[str, str]]) -> list[tuple[int, str]]:
    """``harvester run`` for every job at once; (exit code, stderr) of each."""
    return _finish([_spawn(job, env) for job, env in zip(jobs, envs, strict=True)])


def _wait_for_requests(
    sim: RecordingSimulator, requests: int, children: list[subprocess.Popen[str]]
) -> None:
    """Poll the simulator until it has answered ``requests`` (a point mid-run)."""
    import time

    deadline = time.monotonic() + 120
    while sim.counters()["requests"] < requests:
        if time.monotonic() > deadline or any(c.poll() is not None for c in children):
            for child in children:
                child.kill()
            raise AssertionError(f"the run never got that far: {_finish(children)}")
        time.sleep(0.05)


def _no_limit_answers(sim: RecordingSimulator, ends: list[tuple[int, str]]) -> list[float]:
    """Every run ended 0 and the simulator answered none 31/32; the sorted arrivals."""
    assert [code for code, _ in ends] == [0] * len(ends), [err[-2000:] for _, err in ends]
    codes = sim.counters()["codes"]
    violations = codes.get("31", 0) + codes.get("32", 0)
    assert violations == 0, f"{violations} answers 31/32 at the simulator"
    return sorted(sim.arrivals())


def _shared_run(
    workdir: Path, processes: int, envs: list[dict[str, str]], urls: list[str] | None = None
) -> Path:
    """Processes at once on one key; none gets a 31/32, together they spend the budget."""
    with RecordingSimulator(sim_config(rate_limits=LIMITS, latency=LATENCY)) as sim:
        jobs = _jobs(workdir, urls or sim.base_url, processes)
        arrivals = _no_limit_answers(sim, _run_together(jobs, envs))
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
    return jobs[0]


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
def test_every_spelling_of_the_endpoint_spends_one_budget(tmp_path: Path, budget_dir: Path) -> None:
    with RecordingSimulator(sim_config(rate_limits=LIMITS, latency=LATENCY)) as sim:
        port = urlsplit(sim.base_url).port
        urls = [
            f"http://localhost:{port}/v1",
            f"http://localhost:{port}/v1/",
            f"http://LOCALHOST:{port}/v1/",
        ]
        jobs = _jobs(tmp_path, urls, 3, periods=2)
        _no_limit_answers(sim, _run_together(jobs, [harvester_env()] * 3))
    assert len(list(budget_dir.glob("*.sqlite"))) == 1


@pytest.mark.slow
def test_a_cron_run_and_a_login_shell_share_one_budget(tmp_path: Path) -> None:
    """One process with ``XDG_RUNTIME_DIR`` (a login shell), one without (cron): one budget
    file, in the user's own budget folder (removed after)."""
    login = harvester_env()
    login.pop(BUDGET_DIR_ENV, None)
    runtime = tmp_path / "run"
    runtime.mkdir()
    login.update(XDG_RUNTIME_DIR=str(runtime), XDG_CACHE_HOME=str(tmp_path / "cache"))
    cron = {k: v for k, v in login.items() if not k.startswith("XDG_")}
    folder = budget_dir({})
    with RecordingSimulator(sim_config(rate_limits=LIMITS, latency=LATENCY)) as sim:
        digest = budget_digest(sim.base_url, API_KEY)
        try:
            jobs = _jobs(tmp_path, sim.base_url, 2, periods=2)
            _no_limit_answers(sim, _run_together(jobs, [login, cron]))
            assert (folder / f"{digest}.sqlite").is_file()
        finally:
            for path in folder.glob(f"{digest}.*"):
                path.unlink()
    assert not list(runtime.rglob("*")) and not (tmp_path / "cache").exists()  # nowhere else


@pytest.mark.slow
def test_a_budget_file_deleted_mid_run_keeps_the_key_within_its_limits(
    tmp_path: Path, budget_dir: Path
) -> None:
    with RecordingSimulator(sim_config(rate_limits=LIMITS, latency=LATENCY)) as sim:
        jobs = _jobs(tmp_path, sim.base_url, 3, periods=2)
        children = [_spawn(job, harvester_env()) for job in jobs[:2]]
        _wait_for_requests(sim, 60, children)
        deleted = [p for p in budget_dir.glob("*.sqlite*")]
        for path in deleted:
            path.unlink()  # a cleaner, a careless rm: the processes go on
        children.append(_spawn(jobs[2], harvester_env()))  # a new one makes a new file
        ends = _finish(children)
        _no_limit_answers(sim, ends)
    assert deleted and any("was deleted or replaced" in err for _, err in ends[:2])
    assert len(list(budget_dir.glob("*.sqlite"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 3])
def test_hosts_share_the_key_budget_through_redis(
    tmp_path: Path, redis_db: RedisServer, processes: int
) -> None:
    envs = [_host(tmp_path, f"host{i}") for i in range(processes)]
    with RecordingSimulator(sim_config(rate_limits=LIMITS, latency=LATENCY)) as sim:
        asyncio.run(_held_all_along(redis_db.url, budget_digest(sim.base_url, API_KEY)))
        jobs = _jobs(tmp_path, sim.base_url, processes, rate_budget=redis_db.url)
        arrivals = _no_limit_answers(sim, _run_together(jobs, envs))
    limit = binding(LIMITS)
    periods, rate = steady_use(arrivals, limit)
    assert rate / (limit.calls / limit.seconds) >= FLOOR, (periods, rate)
    for i in range(processes):  # the budget was Redis's: no host wrote a budget file
        assert not list((tmp_path / f"host{i}").rglob("*.sqlite"))


@pytest.mark.slow
def test_redis_restarted_mid_run_then_a_new_process_stays_within_the_limits(
    tmp_path: Path, redis_db: RedisServer
) -> None:
    with RecordingSimulator(sim_config(rate_limits=LIMITS, latency=LATENCY)) as sim:
        asyncio.run(_held_all_along(redis_db.url, budget_digest(sim.base_url, API_KEY)))
        jobs = _jobs(tmp_path, sim.base_url, 2, periods=2, rate_budget=redis_db.url)
        children = [_spawn(jobs[0], _host(tmp_path, "host0"))]
        _wait_for_requests(sim, 40, children)
        redis_db.restart()  # empty: the calls of the last window are forgotten
        children.append(_spawn(jobs[1], _host(tmp_path, "host1")))
        _no_limit_answers(sim, _finish(children))


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
    asyncio.run(_held_all_along(redis_db.url, budget_digest(simulator.base_url, TEST_KEY)))
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
