"""Resuming after kill -9, SIGTERM/SIGINT, a held lock and a crash mid-write, end to end.

The harvester runs as a real subprocess (``python -m harvester run JOB``) against the bundled
simulator over real HTTP. When to kill or signal it is decided by polling the simulator's
counters (or the run's log), never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from harvester.job.model import Job
from harvester.job.parse import load_job
from harvester.lake.dataset import read_dataset
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS, PART_FILE, WriteResult, partitioning
from harvester.layout import LOCK_FILE, STATE_DIR
from harvester.model import Fetched, RateLimit, Unit
from harvester.plan.windows import count_units, iter_units
from harvester.run.commit import Committer, Ledger, Quarantine, Rules
from harvester.simulator import SimulatorConfig, SimulatorThread
from harvester.state.store import StateStore, default_state_path
from tests.conftest import (
    API_KEY,
    API_SECRET,
    actual_rows,
    done_among,
    expected_rows,
    job_dict,
    run_cli,
)

POLL_SECONDS = 0.005
WAIT_SECONDS = 30.0
CONCURRENCY = 4
# Generous: a killed run's requests stay in the simulator's windows while the next one starts.
LIMITS = (RateLimit(1000, 1.0), RateLimit(100_000, 60.0))
HASHES = ("r3sum3a", "r3sum3b", "r3sum3c", "r3sum3d")
FAST = (0.0, 0.005)
DATASETS = (PAGE_STATS, COLLECTION_STATS)

# Put on PYTHONPATH, this makes ``python -m harvester run`` SIGKILL itself halfway through its
# Nth Parquet write: the temp file then holds half a Parquet file, as after a real crash.
KILL_ON_WRITE = """
import os
_N = int(os.environ.get("HARVESTER_TEST_KILL_ON_WRITE", "0"))
if _N:
    import signal
    from harvester.lake import objects

    _real = objects._write_durably
    _calls = [0]

    def _write_durably(path, data):
        if not path.name.endswith(".parquet.tmp"):
            return _real(path, data)
        _calls[0] += 1
        if _calls[0] < _N:
            return _real(path, data)
        _real(path, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    objects._write_durably = _write_durably
"""


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """Generous limits and enough latency for kills and signals to land mid-run."""
    return SimulatorConfig(
        seed=11, keys={API_KEY: API_SECRET}, rate_limits=LIMITS, latency=(0.005, 0.05)
    )


JobWriter = Callable[..., Path]


@pytest.fixture
def resume_job(tmp_path: Path, simulator: SimulatorThread, output_dir: Path) -> JobWriter:
    """Write a daily job over ``hashes`` from ``start`` to ``end`` against the simulator."""

    def write(hashes: tuple[str, ...], start: str, end: str, **overrides: Any) -> Path:
        overrides.setdefault("concurrency", CONCURRENCY)
        job = job_dict(
            simulator.base_url,
            output_dir,
            start=start,
            end=end,
            collections=[{"hash": h} for h in hashes],
            **overrides,
        )
        job["api"]["rate_limits"] = [{"calls": r.calls, "seconds": r.seconds} for r in LIMITS]
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    return write


class Run:
    """One ``python -m harvester run JOB`` subprocess; its stderr goes to a file we can poll."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as fh:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "harvester", "run", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=fh,
            )
        self.pid = self.process.pid

    def stderr(self) -> str:
        """What the run logged so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None

    def send(self, signum: int) -> None:
        """Send a signal to this process (and only it)."""
        self.process.send_signal(signum)

    def wait(self, timeout: float = WAIT_SECONDS) -> int:
        """Its exit code (negative: killed by that signal)."""
        return self.process.wait(timeout)


class Runs:
    """Starts runs; kills the ones a failed test left behind, by their own pid."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self._folder = folder
        self._env = env
        self._started: list[Run] = []

    def start(self, job: Path, *args: str, env: dict[str, str] | None = None) -> Run:
        """Start ``harvester run JOB ARGS`` in the background."""
        log = self._folder / f"run{len(self._started)}.log"
        run = Run([str(job), *args], env or self._env, log)
        self._started.append(run)
        return run

    def complete(self, job: Path, *args: str) -> Run:
        """Run to the end; fail unless it exits 0."""
        run = self.start(job, *args)
        assert run.wait() == 0, run.stderr()
        return run

    def kill_leftovers(self) -> None:
        """SIGKILL every run still alive (after a failed assertion), one by one."""
        for run in self._started:
            if run.running():
                run.process.kill()
                run.process.wait()


@pytest.fixture
def runs(tmp_path: Path, env: dict[str, str]) -> Iterator[Runs]:
    """Harvester subprocesses against the simulator, none left running after the test."""
    started = Runs(tmp_path, env)
    yield started
    started.kill_leftovers()


def wait_until(condition: Callable[[], bool], what: str, run: Run | None = None) -> None:
    """Poll ``condition``; fail after WAIT_SECONDS, or as soon as ``run`` exits without it."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if run is not None and not run.running():
            assert condition(), f"the run exited {run.wait()} before {what}:\n{run.stderr()}"
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_SECONDS)


def successes(simulator: SimulatorThread) -> int:
    """Successful getStats answers the simulator served, counting repeats."""
    return sum(simulator.counters()["successes"].values())


def slow_requests(simulator: SimulatorThread) -> int:
    """Requests the simulator decided to stall (counted on arrival, answered much later)."""
    return int(simulator.counters()["faults"].get("slow", 0))


def served_at_least(simulator: SimulatorThread, n: int) -> Callable[[], bool]:
    """A condition: the simulator has served ``n`` successful answers, repeats included."""
    return lambda: successes(simulator) >= n


def served_units(simulator: SimulatorThread) -> set[Unit]:
    """The units the simulator served a successful answer for."""
    units = set()
    for key in simulator.counters()["successes"]:
        collection_hash, start, end = key.split("|")
        units.add(Unit(collection_hash, date.fromisoformat(start), date.fromisoformat(end)))
    return units


def last_run(job: Job) -> dict[str, Any]:
    """The report of the last run on the job's output."""
    report: dict[str, Any] = json.loads((job.output.path / STATE_DIR / "last-run.json").read_text())
    return report


def rows_of(units: set[Unit], rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows (hash, start, end, ...) that belong to ``units``."""
    return [r for r in rows if Unit(r[0], r[1], r[2]) in units]


def assert_no_visible_partial(output: Path) -> None:
    """What pyarrow and DuckDB would read is whole part files only; temp files stay hidden."""
    for name in DATASETS:
        root = output / name
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if path.is_file() and path.name != PART_FILE:
                assert path.name.startswith(".") and not path.name.endswith(".parquet"), path
        pyarrow_files = ds.dataset(root, format="parquet", partitioning=partitioning()).files
        glob = duckdb.execute(f"SELECT file FROM glob('{root}/**/*.parquet')").fetchall()
        for file in [*pyarrow_files, *(f for (f,) in glob)]:
            assert Path(file).name == PART_FILE, file
            pq.read_metadata(file)  # a whole Parquet file, footer and all
        read_dataset(output, name)


def assert_no_duplicates(output: Path) -> None:
    """One row per unit (and page), as DuckDB reads the Hive-partitioned datasets."""
    keys = {
        PAGE_STATS: "collection_hash, period_start, period_end, page",
        COLLECTION_STATS: "collection_hash, period_start, period_end",
    }
    for name, key in keys.items():
        files = f"{output / name}/**/*.parquet"
        repeated = duckdb.execute(
            f"SELECT {key}, count(*) AS n FROM read_parquet('{files}', hive_partitioning = true)"
            f" GROUP BY ALL HAVING n > 1"
        ).fetchall()
        assert repeated == [], f"{name}: duplicated rows {repeated[:5]}"


def temp_files(output: Path) -> list[Path]:
    """Every file under the datasets that is not a part file."""
    return [
        p
        for name in DATASETS
        if (output / name).exists()
        for p in (output / name).rglob("*")
        if p.is_file() and p.name != PART_FILE
    ]


# --- 1 and 5: kill -9 at random moments, then resume ------------------------------------------


def test_kill_9_at_random_moments_then_resume_to_the_exact_dataset(
    resume_job: JobWriter, simulator: SimulatorThread, sim_config: SimulatorConfig, runs: Runs
) -> None:
    path = resume_job(HASHES, "2026-01-01", "2026-03-01")  # 4 collections x 60 days
    job = load_job(path)
    units = count_units(job)
    lock = job.output.path / STATE_DIR / LOCK_FILE
    # One kill moment drawn in each of six slices of the run, counted in served successes.
    rng = random.Random(20261127)
    kills, low, high = 6, 10, units - 30
    width = (high - low) // kills
    moments = [low + i * width + rng.randrange(width) for i in range(kills)]

    for i, moment in enumerate(moments):
        before = successes(simulator)
        target = max(moment, before + 1)  # every run gets somewhere before its kill
        run = runs.start(path)
        wait_until(served_at_least(simulator, target), f"{target} successes", run)
        run.send(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
        assert_no_visible_partial(job.output.path)
        if i == 0:
            # The kill left the lock file naming a dead holder; the next run must not care.
            assert json.loads(lock.read_text())["pid"] == run.pid
        else:
            assert "another harvester run" not in run.stderr()

    final = runs.complete(path)
    assert "another harvester run" not in final.stderr()
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    assert_no_duplicates(job.output.path)
    assert_no_visible_partial(job.output.path)
    assert temp_files(job.output.path) == []
    with StateStore(default_state_path(job.output)) as store:
        counts = store.counts()
        assert (counts["done"], counts["staged"], counts["failed"]) == (units, 0, 0)
    # A kill costs at most the answers in flight (and the one that triggered it): no more.
    fetched = successes(simulator)
    assert units <= fetched <= units + kills * (1 + CONCURRENCY), fetched
    assert served_units(simulator) == set(iter_units(job))


class BlockedSink(ParquetSink):
    """A sink whose partition writes wait until the test releases them."""

    def __init__(self, output: Path) -> None:
        super().__init__(output)
        self.writing = threading.Event()
        self.release = threading.Event()

    def write_partition(self, period_start: date, results: Any, replaced: Any = ()) -> WriteResult:
        self.writing.set()
        assert self.release.wait(WAIT_SECONDS)
        return super().write_partition(period_start, results, replaced)


async def test_a_result_is_staged_while_the_writer_is_busy_with_a_partition(
    tmp_path: Path,
) -> None:
    # What the kill test's budget relies on: a kill during a long partition write loses only
    # the requests in flight, not the results that arrived meanwhile.
    first, second = (Unit("h4sh", date(2026, 1, d), date(2026, 1, d)) for d in (1, 2))
    at = datetime(2026, 1, 3, tzinfo=UTC)
    sink = BlockedSink(tmp_path / "output")
    rules = Rules(today=date(2026, 1, 3))
    with StateStore(tmp_path / "state.sqlite") as store:
        ledger = Ledger(store, rules, set())
        units = ledger.pending([[first], [second]])
        assert [next(units), next(units)] == [first, second]  # first's partition is closed
        committer = Committer(store, sink, ledger, Quarantine(tmp_path / "q"), rules, set())
        writer = asyncio.create_task(committer.run())
        try:
            committer.put(Fetched(first, at, 1, 2, 3, 4, ((1, 2, 3, 4),)))
            assert await asyncio.to_thread(sink.writing.wait, WAIT_SECONDS)  # first's partition
            result = Fetched(second, at, 5, 6, 7, 8, ())
            committer.put(result)
            await asyncio.sleep(0)  # one turn of the loop; the write is still blocked
            assert store.staged(second.start) == [result]
        finally:
            sink.release.set()
            committer.close()
            await writer
        counts = store.counts()
        assert (counts["done"], counts["staged"], counts["failed"]) == (1, 1, 0)


# --- 2: a finished job makes no request --------------------------------------------------------


def test_rerun_of_a_finished_job_makes_no_request_and_says_so(
    resume_job: JobWriter,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    path = resume_job(HASHES[:2], "2026-03-01", "2026-03-07")
    first = run_cli("run", str(path), env=env)
    assert first.returncode == 0, first.stderr
    simulator.reset_counters()
    again = run_cli("run", str(path), env=env)
    assert again.returncode == 0, again.stderr
    assert simulator.counters()["requests"] == 0
    assert "nothing to do" in again.stderr and "0 requests" in again.stderr
    assert actual_rows(load_job(path).output) == expected_rows(load_job(path), sim_config)


# --- 3: two runs on one output ----------------------------------------------------------------


def holds_open(pid: int, path: Path) -> bool:
    """True when process ``pid`` has ``path`` open (it opens the lock file right before flock)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def test_a_second_run_on_one_output_exits_4_at_once_or_waits_with_wait(
    resume_job: JobWriter,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    runs: Runs,
    env: dict[str, str],
) -> None:
    # Slow answers keep the first run busy (10 rounds of 1 s) until the test lets it finish.
    simulator.reconfigure(latency=(1.0, 1.0))
    path = resume_job(HASHES[:2], "2026-03-01", "2026-03-10", concurrency=2)
    job = load_job(path)
    first = runs.start(path)
    wait_until(lambda: simulator.counters()["requests"] >= 1, "the first run's requests", first)

    refused = run_cli("run", str(path), env=env, timeout=WAIT_SECONDS)
    assert refused.returncode == 4, refused.stderr
    assert str(job.output) in refused.stderr
    assert str(first.pid) in refused.stderr and "--wait" in refused.stderr
    assert first.running()  # refused at once, not after the first run ended

    waiting = runs.start(path, "--wait")
    lock = (job.output.path / STATE_DIR / LOCK_FILE).resolve()
    wait_until(lambda: holds_open(waiting.pid, lock), "the waiting run to open the lock", waiting)
    assert first.running() and waiting.running()
    simulator.reconfigure(latency=FAST)
    assert first.wait() == 0, first.stderr()
    assert waiting.wait() == 0, waiting.stderr()

    assert "nothing to do" in waiting.stderr() and "0 requests" in waiting.stderr()
    assert last_run(job)["requests"] == 0
    assert successes(simulator) == count_units(job)  # every unit fetched once, by the first
    assert actual_rows(job.output) == expected_rows(job, sim_config)


# --- 4: SIGTERM / SIGINT -------------------------------------------------------------------------

SIGNALS = [
    pytest.param(signal.SIGTERM, 143, id="SIGTERM"),
    pytest.param(signal.SIGINT, 130, id="SIGINT"),
]


@pytest.mark.parametrize(("signum", "exit_code"), SIGNALS)
def test_a_signal_stops_gracefully_and_keeps_everything_fetched(
    signum: signal.Signals,
    exit_code: int,
    resume_job: JobWriter,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    runs: Runs,
) -> None:
    path = resume_job(HASHES, "2026-01-01", "2026-03-01")
    job = load_job(path)
    units = set(iter_units(job))
    run = runs.start(path)
    wait_until(served_at_least(simulator, 60), "60 successes", run)
    before_signal = served_units(simulator)
    run.send(signum)
    assert run.wait() == exit_code, run.stderr()

    report = last_run(job)
    assert report["stopped_by"] == signum.name and report["exit_code"] == exit_code
    with StateStore(default_state_path(job.output)) as store:
        done = done_among(store, list(units))
        counts = store.counts()
    assert before_signal <= done  # served before the signal: written and marked done
    assert done == served_units(simulator)  # in-flight answers too; nothing claimed unfetched
    assert (counts["done"], counts["staged"], counts["failed"]) == (len(done), 0, 0)
    assert len(done) < len(units)  # it did stop mid-run
    pages, collections = expected_rows(job, sim_config)
    assert actual_rows(job.output) == (rows_of(done, pages), rows_of(done, collections))

    runs.complete(path)
    assert actual_rows(job.output) == (pages, collections)
    # After a graceful stop nothing is fetched twice.
    assert sorted(simulator.counters()["successes"].values()) == [1] * len(units)


@pytest.mark.parametrize(("signum", "exit_code"), SIGNALS)
def test_a_second_signal_stops_at_once_and_the_next_run_loses_nothing(
    signum: signal.Signals,
    exit_code: int,
    resume_job: JobWriter,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    runs: Runs,
) -> None:
    # Three collections a day for four workers: the stop leaves partitions half fetched, which
    # the next run must complete by adding rows to a partition file that already exists.
    path = resume_job(HASHES[:3], "2026-01-01", "2026-01-30")
    job = load_job(path)
    run = runs.start(path)
    wait_until(served_at_least(simulator, 10), "10 successes", run)
    # From now on every answer stalls 60 s; a stall is counted when the request arrives, so
    # once CONCURRENCY of them are counted, every worker waits on one and none on a fast one.
    simulator.reconfigure(faults={"slow": 1.0}, slow_seconds=60.0)
    wait_until(lambda: slow_requests(simulator) >= CONCURRENCY, "every worker stalled", run)

    run.send(signum)
    wait_until(lambda: signum.name in run.stderr(), "the first signal's log line", run)
    served = served_units(simulator)
    second = time.monotonic()
    run.send(signum)
    assert run.wait() == exit_code, run.stderr()
    # At once: not after the stalled answers, nor after their timeout.
    assert time.monotonic() - second < job.api.timeout_seconds / 2
    assert last_run(job)["stopped_by"] == signum.name

    with StateStore(default_state_path(job.output)) as store:
        done = done_among(store, list(iter_units(job)))
        staged = {r.unit for start in store.staged_periods() for r in store.staged(start)}
    assert served <= done | staged  # every answer received is kept, written or staged

    simulator.reconfigure(faults={})
    runs.complete(path)
    report = last_run(job)
    assert report["units_recovered"] == len(staged)
    assert report["requests"] == count_units(job) - len(done | staged)  # nothing fetched again
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    assert_no_duplicates(job.output.path)


# --- 6: a crash in the middle of a partition write ----------------------------------------------


@pytest.mark.parametrize(
    ("refresh", "kill_on_write"),
    [pytest.param(False, 1, id="first-write"), pytest.param(True, 2, id="rewrite")],
)
def test_a_crash_mid_write_leaves_no_visible_partial_file_and_the_rerun_cleans_up(
    refresh: bool,
    kill_on_write: int,
    resume_job: JobWriter,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    runs: Runs,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    simulator.reconfigure(latency=FAST)
    path = resume_job(HASHES[:2], "2026-03-01", "2026-03-05")
    job = load_job(path)
    if refresh:
        runs.complete(path)
    before = {p: hashlib.sha256(p.read_bytes()).digest() for p in job.output.path.rglob(PART_FILE)}

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_ON_WRITE)
    crash_env = {**env, "PYTHONPATH": str(hook), "HARVESTER_TEST_KILL_ON_WRITE": str(kill_on_write)}
    crashed = runs.start(path, *(["--refresh"] if refresh else []), env=crash_env)
    assert crashed.wait() == -signal.SIGKILL, crashed.stderr()

    [temp] = temp_files(job.output.path)  # the half-written file is there, hidden
    assert temp.stat().st_size > 0
    assert_no_visible_partial(job.output.path)
    # The file being replaced is untouched (on a first write there is none).
    target = temp.parent / PART_FILE
    assert (target in before) == refresh
    if refresh:
        assert hashlib.sha256(target.read_bytes()).digest() == before[target]
        assert actual_rows(job.output) == expected_rows(job, sim_config)

    rerun = runs.complete(path)
    assert "removed 1 temporary files" in rerun.stderr()
    assert temp_files(job.output.path) == []
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    assert_no_duplicates(job.output.path)


# --- 7: refresh_days replaces recent rows ----------------------------------------------------


def test_refresh_days_replaces_recent_rows_from_the_command_line(
    resume_job: JobWriter, simulator: SimulatorThread, sim_config: SimulatorConfig, runs: Runs
) -> None:
    simulator.reconfigure(latency=FAST)
    path = resume_job(HASHES[:2], "-6d", "yesterday", refresh_days=2)
    job = load_job(path)
    runs.complete(path)
    recent = sorted({u.end for u in iter_units(job)})[-2:]  # refresh_days 2: the last two days
    revisions = {day.isoformat(): 1 for day in recent}
    simulator.reconfigure(revisions=revisions)
    simulator.reset_counters()

    runs.complete(path)
    assert simulator.counters()["requests"] == 2 * len(recent)
    revised = dataclasses.replace(sim_config, revisions=revisions)
    assert actual_rows(job.output) == expected_rows(job, revised) != expected_rows(job, sim_config)
    assert_no_duplicates(job.output.path)
