"""Fenced writes: a writer that lost its lease, or the race, writes nothing more into the lake.

Everything here is real: moto's S3 server in a process of its own on a loopback port, buckets
with versioning on (so every write ever made is listed), harvester runs as subprocesses, each
"host" with its own HOME, cache and state. Where a store or a network must misbehave (an answer
lost after the request landed, conditional headers ignored, requests failing), a loopback proxy
in front of moto does it (:mod:`tests.store_server`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from harvester.errors import LeaseLost, StorageError, WriteConflict
from harvester.job.location import Location
from harvester.job.parse import load_job
from harvester.lake.objects import NEW, LocalObjects
from harvester.lake.objlock import LEASE_ENV, ObjectLock
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import PAGE_STATS
from harvester.model import Fetched, Unit
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import API_KEY, API_SECRET, actual_rows, expected_rows, job_dict
from tests.store_server import StoreProxy, moto_process
from tests.test_resume import LIMITS, served_at_least, wait_until

pytestmark = pytest.mark.slow

WAIT = 60.0
SHORT_LEASE = "3"  # seconds: a run stopped for longer has lost its lock

# Put on PYTHONPATH of a run: pause it where a test needs it, by the run's own hand.
#   HARVESTER_TEST_STOP=before-write:N  SIGSTOP itself as its Nth partition write begins
#   HARVESTER_TEST_STOP=mid-write:N     SIGSTOP itself right before its Nth part-file PUT
#                                       (after every check: the request goes out on SIGCONT)
#   HARVESTER_TEST_HOLD=PATH            its first partition write waits until PATH exists
HOOK = """
import os, signal, time
_stop = os.environ.get("HARVESTER_TEST_STOP", "")
_hold = os.environ.get("HARVESTER_TEST_HOLD", "")
if _stop or _hold:
    from harvester.lake import objects, parquet
    _where, _, _n = _stop.partition(":")
    _count = [0]

    def _pause():
        _count[0] += 1
        if _count[0] == int(_n):
            os.kill(os.getpid(), signal.SIGSTOP)
            # kill() may return before every thread has stopped: go on only once stopped
            # (the stop outlasts the lease: after SIGCONT the clock has jumped past this).
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                time.sleep(0.01)

    _write = parquet.ParquetSink.write_partition

    def write_partition(self, *args, **kwargs):
        if _where == "before-write":
            _pause()
        while _hold and not os.path.exists(_hold):
            time.sleep(0.01)
        return _write(self, *args, **kwargs)

    parquet.ParquetSink.write_partition = write_partition
    _put = objects.StoreObjects._put

    def _store_put(self, path, data, expect):
        if _where == "mid-write" and path.endswith(".parquet"):
            _pause()
        return _put(self, path, data, expect)

    objects.StoreObjects._put = _store_put
"""


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """Enough latency for a run to be stopped mid-way."""
    return SimulatorConfig(
        seed=5, keys={API_KEY: API_SECRET}, rate_limits=LIMITS, latency=(0.01, 0.05)
    )


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server in its own process: its endpoint."""
    with moto_process(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


def s3(endpoint: str) -> Any:
    """A boto3 client on moto (the tests' own view of the bucket, never the harvester's)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="fence-test",
        aws_secret_access_key="fence-secret",
    )


@pytest.fixture
def bucket(moto: str) -> str:
    """A new bucket with versioning on: every version ever written stays listed."""
    name = f"fence-{uuid.uuid4().hex[:10]}"
    client = s3(moto)
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def aws_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables for ``endpoint``: explicit, never a default chain."""
    return {
        "AWS_ACCESS_KEY_ID": "fence-test",
        "AWS_SECRET_ACCESS_KEY": "fence-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(autouse=True)
def aws(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process reads the lake from moto (the runs get their own variables)."""
    for name, value in aws_env(moto).items():
        monkeypatch.setenv(name, value)


class Host:
    """A machine of its own for runs: HOME, cache (so the state) and the store's address."""

    def __init__(self, folder: Path, base: dict[str, str], endpoint: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        hook = folder / "hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(HOOK)
        self.env = {
            **base,
            "HOME": str(folder / "home"),
            "XDG_CACHE_HOME": str(folder / "cache"),
            **aws_env(endpoint),
            "PYTHONPATH": str(hook),
        }
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, job: Path, *args: str, prefix: tuple[str, ...] = (), **env: str) -> Proc:
        """``harvester run JOB ARGS`` in the background (behind ``prefix``: unshare)."""
        log = self.folder / f"run{len(self.started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "harvester", "run", str(job), *args],
                env={**self.env, **env},
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        self.started.append(process)
        return Proc(process, log)

    def run(self, job: Path, *args: str, **env: str) -> Proc:
        """A run to its end."""
        proc = self.start(job, *args, **env)
        proc.wait()
        return proc

    def last_report(self) -> dict[str, Any]:
        """The last run's report, beside its state in this host's cache."""
        found = sorted((self.folder / "cache").rglob("last-run.json"))
        assert len(found) == 1, found
        report: dict[str, Any] = json.loads(found[0].read_text())
        return report

    def kill_leftovers(self) -> None:
        """After a failed assertion: no run stays (stopped or not), each by its own pid."""
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()


class Proc:
    """One run: its process and its stderr."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        """Its pid (in this namespace)."""
        return self.process.pid

    def stderr(self) -> str:
        """What it logged so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        """Not exited yet."""
        return self.process.poll() is None

    def wait(self) -> int:
        """Its exit code."""
        return self.process.wait(WAIT)

    def stopped(self) -> bool:
        """Stopped by a signal (state T in /proc)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rpartition(")")[2].split()[0] in ("T", "t")

    @property
    def returncode(self) -> int | None:
        return self.process.returncode


@pytest.fixture
def hosts(tmp_path: Path, env: dict[str, str], moto: str) -> Iterator[Callable[..., Host]]:
    """Make hosts; every run they started is gone after the test."""
    made: list[Host] = []

    def make(name: str, endpoint: str | None = None) -> Host:
        host = Host(tmp_path / name, env, endpoint or moto)
        made.append(host)
        return host

    yield make
    for host in made:
        for process in host.started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
        host.kill_leftovers()


def write_job(
    folder: Path, simulator: SimulatorThread, output: str, hashes: tuple[str, ...], **more: Any
) -> Path:
    """A daily job over ``hashes`` for 2026-01-01..02-09, writing to ``output``."""
    job = job_dict(
        simulator.base_url,
        Path("unused"),
        start="2026-01-01",
        end="2026-02-09",
        collections=[{"hash": h} for h in hashes],
        **more,
    )
    job["api"]["rate_limits"] = [{"calls": r.calls, "seconds": r.seconds} for r in LIMITS]
    job["output"] = output
    path = folder / f"job-{uuid.uuid4().hex[:6]}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job))
    return path


def versions(endpoint: str, bucket: str) -> list[tuple[str, str, bool]]:
    """Every version and delete marker ever made in the bucket: (key, version id, is marker)."""
    found: list[tuple[str, str, bool]] = []
    pages = s3(endpoint).get_paginator("list_object_versions").paginate(Bucket=bucket)
    for page in pages:
        found += [(v["Key"], v["VersionId"], False) for v in page.get("Versions", [])]
        found += [(m["Key"], m["VersionId"], True) for m in page.get("DeleteMarkers", [])]
    return sorted(found)


def contents(endpoint: str, bucket: str) -> dict[str, bytes]:
    """Every current object's bytes."""
    client = s3(endpoint)
    found = {}
    for listed in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        key = listed["Key"]
        with contextlib.suppress(client.exceptions.NoSuchKey):  # a probe object, gone since
            found[key] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return found


def lock_tokens(endpoint: str, bucket: str, key: str) -> list[str]:
    """The token of each version of the lock object, oldest first."""
    client = s3(endpoint)
    listed = client.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    tokens = []
    for v in listed:  # newest first, as S3 lists them
        body = client.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"]
        tokens.append(json.loads(body.read())["token"])
    return tokens[::-1]


def part_files(endpoint: str, bucket: str) -> list[str]:
    """The part files the bucket holds now."""
    return [k for k in contents(endpoint, bucket) if k.endswith(".parquet")]


# --- a writer stopped past its lease --------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "collections"),
    [
        ("mid-run", "same"),
        ("before-write", "different"),
        ("mid-write", "same"),
        ("mid-write", "different"),
    ],
)
def test_a_writer_stopped_past_its_lease_writes_nothing_after_the_takeover(
    stop: str,
    collections: str,
    hosts: Callable[..., Host],
    bucket: str,
    moto: str,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output = f"s3://{bucket}/lake"
    mine, theirs = ("a1", "a2", "a3"), ("b1", "b2", "b3")
    job_a = write_job(tmp_path / "jobs", simulator, output, mine)
    job_b = write_job(
        tmp_path / "jobs", simulator, output, mine if collections == "same" else theirs
    )
    a, b = hosts("host-a"), hosts("host-b")
    hook = {} if stop == "mid-run" else {"HARVESTER_TEST_STOP": f"{stop}:3"}
    run_a = a.start(job_a, **{LEASE_ENV: SHORT_LEASE}, **hook)
    if stop == "mid-run":
        wait_until(lambda: len(part_files(moto, bucket)) >= 2, "A's first commits")
        wait_until(served_at_least(simulator, 20), "A under way")
        run_a.process.send_signal(signal.SIGSTOP)
    wait_until(run_a.stopped, "A stopped")
    before_takeover = versions(moto, bucket)
    # B, on another host, waits for A's lease to end, takes the lock over, and finishes.
    run_b = b.run(job_b, "--wait")
    assert run_b.returncode == 0, run_b.stderr()
    assert "took the lock over from host" in run_b.stderr()
    left_by_b = (versions(moto, bucket), contents(moto, bucket))
    assert set(before_takeover) < set(left_by_b[0])
    run_a.process.send_signal(signal.SIGCONT)
    assert run_a.wait() == 4, run_a.stderr()
    # Not one version written by A after B's takeover: the lake is byte for byte B's.
    assert (versions(moto, bucket), contents(moto, bucket)) == left_by_b
    # The lock's history: A's versions, then B's only (the takeover, renewals, release).
    tokens = lock_tokens(moto, bucket, "lake/_harvester/lock.json")
    first_of_b = tokens.index(tokens[-1])
    assert len(set(tokens[:first_of_b])) == 1 and set(tokens[first_of_b:]) == {tokens[-1]}
    error = run_a.stderr().strip().splitlines()[-1]
    if stop == "mid-write":  # its PUT went out after every check: the store refused it
        assert "another writer changed this object" in error, run_a.stderr()
        assert f"s3://{bucket}/lake/" in error and "part-0.parquet" in error
    else:  # its own clock stopped it before the request
        assert "lease" in error or "took the lock over" in error, run_a.stderr()
    report = a.last_report()  # the report is written, beside A's state only
    assert (report["exit_code"], report["stopped_by"]) == (4, type_of(error))
    b_rows = rows_of(load_job(job_b), actual_rows(load_job(job_b).output))
    assert b_rows == expected_rows(load_job(job_b), sim_config)  # B's page rows all survive
    if collections == "different":  # what A committed before the stop is exact too
        pages, units = rows_of(load_job(job_a), actual_rows(load_job(job_a).output))
        all_pages, all_units = expected_rows(load_job(job_a), sim_config)
        assert set(pages) <= set(all_pages) and set(units) <= set(all_units) and units


def type_of(error: str) -> str:
    """The error class a run's last line names, by its words."""
    return "WriteConflict" if "another writer changed" in error else "LeaseLost"


def rows_of(job: Any, rows: tuple[list[Any], list[Any]]) -> tuple[list[Any], list[Any]]:
    """The page and collection rows of the job's collections."""
    mine = {c.hash for c in job.collections}
    return [r for r in rows[0] if r[0] in mine], [r for r in rows[1] if r[0] in mine]


# --- two containers with one hostname ---------------------------------------------------------


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(
    not _unshare_works(),
    reason="needs unshare --pid --fork --mount-proc (root, or user namespaces allowed)",
)
def test_same_hostname_in_another_pid_namespace_is_not_taken_for_dead(
    hosts: Callable[..., Host],
    bucket: str,
    moto: str,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output = f"s3://{bucket}/lake"
    job = write_job(tmp_path / "jobs", simulator, output, ("n1", "n2"))
    a, b = hosts("host-a"), hosts("host-b")
    hold = tmp_path / "let-a-go"
    # A runs as pid ~40 of its own namespace (a shell spawns a few first), so that its pid is
    # not alive in B's namespace: a check by hostname and pid alone would take its lock.
    spawn = "for i in $(seq 40); do /bin/true; done; "
    argv = " ".join([sys.executable, "-m", "harvester", "run", str(job)])
    unshare = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
    log = a.folder / "a.log"
    with open(log, "wb") as out:
        run_a = subprocess.Popen(
            [*unshare, "sh", "-c", spawn + argv],
            env={**a.env, "HARVESTER_TEST_HOLD": str(hold)},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    a.started.append(run_a)
    key = "lake/_harvester/lock.json"
    held = lambda: key in contents(moto, bucket)  # noqa: E731
    wait_until(held, "A holding the lock")
    holder = json.loads(contents(moto, bucket)[key])
    assert holder["pid_ns"] != os.stat("/proc/self/ns/pid").st_ino
    assert holder["pid"] > 10  # no such pid in B's new namespace, where B is pid 1
    run_b = b.start(job, prefix=unshare)
    assert run_b.wait() == 4, run_b.stderr()
    assert "being written by another harvester run" in run_b.stderr()
    assert f"pid {holder['pid']}" in run_b.stderr()
    hold.touch()
    assert run_a.wait(WAIT) == 0, log.read_text()
    assert actual_rows(load_job(job).output) == expected_rows(load_job(job), sim_config)


# --- a lost answer, a store that ignores conditions, a store that fails ------------------------


def test_an_answer_lost_after_the_lock_was_written_is_adopted_not_refused(
    hosts: Callable[..., Host],
    bucket: str,
    moto: str,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    lock_puts = [0]

    def decide(method: str, path: str) -> str:
        if method == "PUT" and path.endswith("/_harvester/lock.json"):
            lock_puts[0] += 1
            return "drop" if lock_puts[0] in (1, 3) else "forward"  # the take, a renewal
        return "forward"

    with StoreProxy(moto, decide=decide) as proxy:
        host = hosts("host", proxy.endpoint)
        job = write_job(tmp_path / "jobs", simulator, f"s3://{bucket}/lake", ("l1", "l2"))
        hold = tmp_path / "go"
        run = host.start(job, **{LEASE_ENV: SHORT_LEASE, "HARVESTER_TEST_HOLD": str(hold)})
        wait_until(lambda: proxy.dropped == 2 or not run.running(), "two answers lost")
        hold.touch()
        assert run.wait() == 0, run.stderr()
    assert proxy.dropped == 2
    assert run.stderr().count("a write's answer was lost; the lock is this run's") == 2
    assert actual_rows(load_job(job).output) == expected_rows(load_job(job), sim_config)
    # Each lost answer was followed by the SDK's retry of the same PUT, refused (412): the
    # write had landed. Adopted, not taken for another holder.
    statuses = [s for m, p, s in proxy.seen if m == "PUT" and p.endswith("lock.json")]
    assert statuses[:2] == [200, 412] and 412 in statuses[2:4]


def test_a_store_that_ignores_conditional_writes_is_refused_unless_allowed(
    hosts: Callable[..., Host],
    bucket: str,
    moto: str,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    with StoreProxy(moto, strip_conditions=True) as proxy:
        host = hosts("host", proxy.endpoint)
        job = write_job(tmp_path / "jobs", simulator, f"s3://{bucket}/lake", ("u1",))
        refused = host.run(job)
        assert refused.returncode == 2, refused.stderr()
        assert "ignores conditional writes" in refused.stderr()
        assert "--allow-unfenced" in refused.stderr()
        assert "storage: {allow_unfenced: true}" in refused.stderr()
        assert contents(moto, bucket) == {}  # nothing written (the probe cleaned up)
        assert simulator.counters()["successes"] == {}  # nothing requested
        allowed = host.run(job, "--allow-unfenced")
        assert allowed.returncode == 0, allowed.stderr()
        assert "running unfenced as allowed" in allowed.stderr()
        by_job = write_job(
            tmp_path / "jobs",
            simulator,
            f"s3://{bucket}/lake",
            ("u1",),
            storage={"allow_unfenced": True},
        )
        assert host.run(by_job).returncode == 0
    assert actual_rows(load_job(job).output) == expected_rows(load_job(job), sim_config)


@pytest.mark.parametrize("failing", ["part files", "everything"])
def test_a_store_failing_mid_run_exits_74_naming_it_and_the_report_is_written(
    failing: str,
    hosts: Callable[..., Host],
    bucket: str,
    moto: str,
    simulator: SimulatorThread,
    tmp_path: Path,
) -> None:
    parts = [0]

    def decide(method: str, path: str) -> str:
        if method == "PUT" and path.endswith(".parquet"):
            parts[0] += 1
        if parts[0] > 6 and (failing == "everything" or path.endswith(".parquet")):
            return "fail"
        return "forward"

    with StoreProxy(moto, decide=decide) as proxy:
        host = hosts("host", proxy.endpoint)
        job = write_job(tmp_path / "jobs", simulator, f"s3://{bucket}/lake", ("f1", "f2"))
        run = host.run(job)
    assert run.returncode == 74, run.stderr()
    error = [line for line in run.stderr().splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "part-0.parquet" in error[0], run.stderr()
    assert f"s3://{bucket}/lake/" in error[0] and "object store failed a write" in error[0]
    assert "lock" not in error[0]
    report = host.last_report()
    assert (report["exit_code"], report["stopped_by"]) == (74, "StorageError")
    assert "part-0.parquet" in report["message"]
    if failing == "everything":
        assert "could not mark the lock released" in run.stderr()


# --- the lock's own clock, in process --------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_holder_stops_writing_when_its_own_clock_says_the_lease_is_over(
    bucket: str, moto: str
) -> None:
    clock = FakeClock()
    location = Location.parse(f"s3://{bucket}/p")
    lock = ObjectLock(location, lease_seconds=60, renew_seconds=3600, monotonic=clock)
    lock.acquire()
    try:
        lock.check()
        clock.now += 49.9  # the lease less its margin (10 s) not yet over
        lock.check()
        clock.now += 0.2  # now it is: no request was needed to know
        with pytest.raises(LeaseLost, match=r"last renewed 50\.1 s ago"):
            lock.check()
        sink = ParquetSink(location)
        sink.guard = lock.check
        with pytest.raises(LeaseLost):
            sink.write_partition(date(2026, 1, 1), [_answer(date(2026, 1, 1))])
        assert part_files(moto, bucket) == []
    finally:
        lock.release()


def test_a_renewal_that_fails_stops_writing_at_once(
    bucket: str, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = [False]

    def decide(method: str, path: str) -> str:
        return "fail" if failing[0] and method == "PUT" else "forward"

    with StoreProxy(moto, decide=decide) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        lost: list[bool] = []
        lock = ObjectLock(Location.parse(f"s3://{bucket}/p"), renew_seconds=0.05)
        lock.on_lost = lambda: lost.append(True)
        lock.acquire()
        failing[0] = True
        wait_until(lambda: bool(lost), "the renewal given up")
        with pytest.raises(StorageError, match="lock could not be renewed") as raised:
            lock.check()
        assert raised.value.uri == f"s3://{bucket}/p/_harvester/lock.json"
        lock.release()  # logged, never raised


# --- the merge's version is the one the write requires ---------------------------------------


def _answer(day: date, views: int = 1, hash_: str = "m1") -> Fetched:
    from datetime import UTC, datetime

    at = datetime(2026, 6, 1, tzinfo=UTC)
    return Fetched(Unit(hash_, day, day), at, 1, views, 1, 0, ((1, views, 0, 1),))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_partition_changed_between_its_merge_and_its_write_is_not_overwritten(
    where: str, bucket: str, moto: str, tmp_path: Path
) -> None:
    output = str(tmp_path / "out") if where == "local" else f"s3://{bucket}/p"
    sink = ParquetSink(Location.parse(output))
    day = date(2026, 1, 1)
    sink.write_partition(day, [_answer(day)])
    target = sink._part(PAGE_STATS, day)
    theirs = b"another writer's bytes"
    calls = [0]

    def outsider() -> None:  # the guard runs right before each write: after the merge read
        calls[0] += 1
        if calls[0] == 2:
            if where == "local":
                Path(target + ".x").write_bytes(theirs)
                os.replace(target + ".x", target)
            else:
                s3(moto).put_object(Bucket=bucket, Key=target.partition("/")[2], Body=theirs)

    sink.guard = outsider
    with pytest.raises(WriteConflict) as raised:
        sink.write_partition(day, [_answer(day, views=99)])
    assert raised.value.uri.endswith("page_stats/period_start=2026-01-01/part-0.parquet")
    got = sink.objects.get(target)
    assert got is not None and got[0] == theirs  # theirs stands, whole
    if where == "local":
        assert sorted(p.name for p in Path(target).parent.iterdir()) == ["part-0.parquet"]


def test_local_objects_create_only_where_nothing_is(tmp_path: Path) -> None:
    objects = LocalObjects()
    path = str(tmp_path / "a" / "b.json")
    first = objects.put(path, b"1", expect=NEW)
    with pytest.raises(WriteConflict, match="expected no object"):
        objects.put(path, b"2", expect=NEW)
    second = objects.put(path, b"3", expect=first)
    with pytest.raises(WriteConflict):
        objects.put(path, b"4", expect=first)
    assert objects.get(path) == (b"3", second)
