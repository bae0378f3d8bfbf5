"""The lake is the record: object storage over a real S3 API, and the dataset as what is done.

The S3 server is moto's, started here on a free loopback port; the harvester reaches it over
HTTP through the same code as AWS (pyarrow's S3 filesystem for reads, obstore for writes and
the lock), configured
only by the standard AWS environment variables.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from harvester.errors import LockedError
from harvester.job.location import Location
from harvester.job.parse import load_job
from harvester.lake.holder import Holder
from harvester.lake.objlock import ObjectLock
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import API_KEY, API_SECRET, actual_rows, expected_rows, job_dict, run_cli
from tests.test_resume import LIMITS, Runs, served_at_least, successes, wait_until

SECRET = "lake-secret-8c1f-never-printed"
ACCESS_KEY = "AKIALAKETEST0001"


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """Enough latency for a kill to land mid-run."""
    return SimulatorConfig(
        seed=11, keys={API_KEY: API_SECRET}, rate_limits=LIMITS, latency=(0.005, 0.05)
    )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 API on a free loopback port: its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(
    s3_server: str, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The standard AWS variables pointing at the server (for subprocesses and this process)."""
    aws = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    return {**env, **aws}


@pytest.fixture
def bucket(s3_env: dict[str, str]) -> str:
    """A new, empty bucket."""
    name = f"lake-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name


@pytest.fixture
def lake_job(tmp_path: Path, simulator: SimulatorThread) -> Callable[..., Path]:
    """Write a job file against the simulator whose output is ``output``."""
    counter = iter(range(1000))

    def write(output: str, **overrides: Any) -> Path:
        job = job_dict(simulator.base_url, Path("unused"), **overrides)
        job["output"] = output
        path = tmp_path / f"lake{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    return write


def report_of(done: Any, state: Path) -> dict[str, Any]:
    """The last run's report, beside its state."""
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads((state.parent / "last-run.json").read_text())
    return report


def cached_state(output: str, env: dict[str, str]) -> Path:
    """Where a run keeps the state of an object-store output by default."""
    key = Location.parse(output).cache_key()
    return Path(env["XDG_CACHE_HOME"]) / "harvester" / key / "state.sqlite"


def keys_under(env: dict[str, str], bucket: str, prefix: str = "") -> list[str]:
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    found = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in found)


# --- object storage end to end ----------------------------------------------------------------


def test_a_job_to_s3_reads_back_exactly_and_a_rerun_or_a_new_state_makes_no_call(
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output = f"s3://{bucket}/stats"
    path = lake_job(output)
    job = load_job(path)
    first = run_cli("run", str(path), env=s3_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    assert not (tmp_path / "s3:").exists()  # never a local folder named after the scheme
    state = cached_state(output, s3_env)
    assert state.is_file()
    keys = keys_under(s3_env, bucket, "stats/")
    assert "stats/_harvester/output.json" in keys
    assert any(k.startswith("stats/_harvester/runs/run-") for k in keys)
    assert all(k.endswith((".parquet", ".json")) for k in keys), keys
    assert SECRET not in first.stdout + first.stderr

    again = run_cli("run", str(path), env=s3_env)
    assert report_of(again, state)["requests"] == 0

    # A new machine: an empty state elsewhere knows nothing, the lake knows everything.
    fresh = tmp_path / "fresh" / "state.sqlite"
    new = run_cli("run", str(path), "--state", str(fresh), env=s3_env)
    assert report_of(new, fresh)["requests"] == 0, new.stderr
    assert "rebuilt what is done from the dataset" in new.stderr
    assert actual_rows(job.output) == expected_rows(job, sim_config)

    # The dry run on a state-less machine agrees; history and last success come from the lake.
    shutil.rmtree(state.parent)
    dry = run_cli("run", str(path), "--dry-run", env=s3_env)
    assert dry.returncode == 0, dry.stderr
    assert ", 0 to fetch now" in dry.stdout
    history = run_cli("runs", output, "--json", env=s3_env)
    assert history.returncode == 0, history.stderr
    units = len(expected_rows(job, sim_config)[1])
    assert [r["units_committed"] for r in json.loads(history.stdout)] == [0, 0, units]
    status = run_cli("status", str(path), env=s3_env)
    assert status.returncode == 0, status.stderr
    assert "no local state here" in status.stdout
    assert "last success:" in status.stdout
    # Storage credentials are secrets: in no file written, here or in the bucket.
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    for key in keys_under(s3_env, bucket):
        assert SECRET.encode() not in client.get_object(Bucket=bucket, Key=key)["Body"].read()
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file


def test_a_missing_bucket_is_a_clear_error_and_writes_nothing(
    lake_job: Callable[..., Path], s3_env: dict[str, str], tmp_path: Path
) -> None:
    path = lake_job("s3://no-such-bucket-here/stats")
    done = run_cli("run", str(path), env=s3_env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "bucket 'no-such-bucket-here' does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert not (tmp_path / "s3:").exists()


def test_an_unreachable_store_exits_74_without_a_traceback_or_a_secret(
    lake_job: Callable[..., Path], s3_env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    done = run_cli("run", str(lake_job("s3://some-bucket/stats")), env=env, cwd=tmp_path)
    assert done.returncode == 74, done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stdout + done.stderr


class _Refusing:
    """An S3 endpoint that refuses every request as AWS does with bad credentials (HTTP 403,
    ``InvalidAccessKeyId``): moto's server accepts any credentials, so this stands in for AWS
    turning the key down."""

    BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
        b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message>"
        b"</Error>"
    )

    def __enter__(self) -> str:
        import http.server
        import threading

        body = self.BODY

        class Handler(http.server.BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _refuse

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_refused_credentials_exit_74_naming_what_to_check_and_write_nothing(
    lake_job: Callable[..., Path], s3_env: dict[str, str], tmp_path: Path
) -> None:
    with _Refusing() as endpoint:
        env = {**s3_env, "AWS_ENDPOINT_URL": endpoint}
        done = run_cli("run", str(lake_job("s3://some-bucket/stats")), env=env, cwd=tmp_path)
    assert done.returncode == 74, done.stderr
    assert "refused or failed the request" in done.stderr and "AWS_ACCESS_KEY_ID" in done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "some-bucket").exists()


def test_the_storage_block_gives_the_endpoint(
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
) -> None:
    env = {k: v for k, v in s3_env.items() if k != "AWS_ENDPOINT_URL"}
    storage = {"endpoint": s3_env["AWS_ENDPOINT_URL"], "region": "us-east-1"}
    path = lake_job(f"s3://{bucket}/in-file", storage=storage)
    done = run_cli("run", str(path), env=env)
    assert done.returncode == 0, done.stderr
    job = load_job(path)
    assert actual_rows(job.output) == expected_rows(job, sim_config)


# --- the dataset records what is done ---------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_partition_deleted_by_hand_is_fetched_again(
    where: str,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output = str(tmp_path / "out") if where == "local" else f"s3://{bucket}/stats"
    path = lake_job(output)
    job = load_job(path)
    assert run_cli("run", str(path), env=s3_env).returncode == 0
    part = f"{COLLECTION_STATS}/period_start=2026-03-05/part-0.parquet"
    pages = f"{PAGE_STATS}/period_start=2026-03-05/part-0.parquet"
    if where == "local":
        (tmp_path / "out" / part).unlink()
        (tmp_path / "out" / pages).unlink()
        state = tmp_path / "out" / "_state" / "state.sqlite"
    else:
        client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
        client.delete_object(Bucket=bucket, Key=f"stats/{part}")
        client.delete_object(Bucket=bucket, Key=f"stats/{pages}")
        state = cached_state(output, s3_env)

    check = run_cli("verify", output, env=s3_env)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "2 done there but missing from the dataset" in check.stdout
    assert "missing: x9y8z7 2026-03-05..2026-03-05" in check.stdout

    again = run_cli("run", str(path), env=s3_env)
    report = report_of(again, state)
    assert report["units_to_fetch"] == 2  # the two collections of that day, nothing else
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    assert run_cli("verify", output, env=s3_env).returncode == 0


def test_whether_a_window_is_final_comes_from_the_dataset(
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # A window ending today is provisional: a new state must fetch it again, not trust it.
    today = datetime.now(UTC).date()
    start = today - timedelta(days=2)
    path = lake_job(
        f"s3://{bucket}/live",
        start=start.isoformat(),
        end=today.isoformat(),
        collections=[{"hash": "d3m0h45h"}],
    )
    assert run_cli("run", str(path), env=s3_env).returncode == 0
    fresh = tmp_path / "new" / "state.sqlite"
    new = run_cli("run", str(path), "--state", str(fresh), env=s3_env)
    report = report_of(new, fresh)
    assert (report["units_to_fetch"], report["units_provisional"]) == (1, 1), new.stderr


# --- commits and the lock on object storage ---------------------------------------------------


@pytest.fixture
def s3_runs(tmp_path: Path, s3_env: dict[str, str]) -> Iterator[Runs]:
    started = Runs(tmp_path, s3_env)
    yield started
    started.kill_leftovers()


def test_kill_9_mid_run_on_s3_then_rerun_is_exact(
    lake_job: Callable[..., Path],
    bucket: str,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    s3_runs: Runs,
) -> None:
    hashes = [{"hash": h} for h in ("d3m0h45h", "x9y8z7", "f1ipb00k", "k1ll9")]
    path = lake_job(
        f"s3://{bucket}/killed", start="2026-01-01", end="2026-02-09", collections=hashes
    )
    job = load_job(path)
    for target in (30, 90):
        run = s3_runs.start(path)
        wait_until(
            served_at_least(simulator, max(target, successes(simulator) + 1)), "answers", run
        )
        run.send(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
    final = s3_runs.complete(path)
    assert "another harvester run" not in final.stderr()  # a dead holder on this host: taken over
    assert actual_rows(job.output) == expected_rows(job, sim_config)  # exact: no duplicate rows


def test_two_runs_on_one_lake_with_different_states_one_exits_4(
    lake_job: Callable[..., Path],
    bucket: str,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    s3_runs: Runs,
    tmp_path: Path,
) -> None:
    hashes = [{"hash": h} for h in ("d3m0h45h", "x9y8z7", "f1ipb00k")]
    path = lake_job(
        f"s3://{bucket}/shared", start="2026-01-01", end="2026-02-28", collections=hashes
    )
    first = s3_runs.start(path, "--state", str(tmp_path / "a" / "state.sqlite"))
    wait_until(served_at_least(simulator, 5), "the first run under way", first)
    second = run_cli(
        "run", str(path), "--state", str(tmp_path / "b" / "state.sqlite"), env=s3_runs._env
    )
    assert second.returncode == 4, second.stderr
    assert "being written by another harvester run" in second.stderr
    assert f"host {socket.gethostname()}, pid {first.pid}" in second.stderr
    assert first.wait() == 0, first.stderr()
    job = load_job(path)
    assert actual_rows(job.output) == expected_rows(job, sim_config)


def _lock_body(client: Any, bucket: str) -> dict[str, Any]:
    got = client.get_object(Bucket=bucket, Key="p/_harvester/lock.json")
    body: dict[str, Any] = json.loads(got["Body"].read())
    return body


def test_the_lock_is_created_once_renewed_released_and_taken_over_only_when_it_may(
    bucket: str, s3_env: dict[str, str]
) -> None:
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    location = Location.parse(f"s3://{bucket}/p")
    first = ObjectLock(location, renew_seconds=0.05)
    first.acquire()
    try:
        held = _lock_body(client, bucket)
        assert (held["host"], held["pid"], held["released"]) == (
            socket.gethostname(),
            os.getpid(),
            False,
        )
        with pytest.raises(Exception, match="another harvester run"):
            ObjectLock(location).acquire()  # alive, on this host, lease running
        renewed = lambda: _lock_body(client, bucket)["expires_at"] != held["expires_at"]  # noqa: E731
        wait_until(renewed, "a renewal")
    finally:
        first.release()
    assert _lock_body(client, bucket)["released"] is True
    second = ObjectLock(location)
    second.acquire()  # a released lock is taken at once, by a conditional write
    second.release()


def _plant(client: Any, bucket: str, **holder: Any) -> None:
    body = {"host": "other-host", "pid": 1, "token": "t", "released": False, **holder}
    client.put_object(Bucket=bucket, Key="p/_harvester/lock.json", Body=json.dumps(body))


def test_another_hosts_lock_is_taken_over_only_after_its_lease(
    bucket: str, s3_env: dict[str, str]
) -> None:
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    location = Location.parse(f"s3://{bucket}/p")
    later = (datetime.now(UTC) + timedelta(seconds=60)).isoformat()
    _plant(client, bucket, expires_at=later)
    with pytest.raises(Exception, match="host other-host, pid 1"):
        ObjectLock(location).acquire()
    _plant(client, bucket, expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    lock = ObjectLock(location)
    lock.acquire()
    assert _lock_body(client, bucket)["host"] == socket.gethostname()
    lock.release()
    # A dead process of this machine and PID namespace: taken over at once, lease or not.
    here = Holder.here().fields()
    dead = {**here, "pid": 2**22 + 7, "started": 1}
    _plant(client, bucket, **dead, expires_at=later)
    lock = ObjectLock(location)
    lock.acquire()
    lock.release()
    # The same hostname alone proves nothing: another machine (boot id), another PID namespace,
    # a pid alive with its own start time, or a lock that does not say: the lease decides.
    for other in (
        {"boot_id": "another-machine"},
        {"pid_ns": 1},
        {"pid": os.getpid(), "started": here["started"]},
        {"boot_id": None, "pid_ns": None, "started": None},
    ):
        _plant(client, bucket, **{**dead, **other}, expires_at=later)
        with pytest.raises(LockedError, match="being written by another harvester run"):
            ObjectLock(location).acquire()


def test_a_renewal_refused_means_the_lock_was_lost(bucket: str, s3_env: dict[str, str]) -> None:
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    lock = ObjectLock(Location.parse(f"s3://{bucket}/p"), renew_seconds=0.05)
    lock.acquire()
    _plant(client, bucket, expires_at=datetime.now(UTC).isoformat())  # someone else's version
    wait_until(lambda: lock.lost, "the renewal refused")
    sink = ParquetSink(Location.parse(f"s3://{bucket}/p"))
    sink.guard = lock.check  # as a run wires it: no write once the lock is lost
    with pytest.raises(LockedError, match="took the lock over"):
        sink.write_partition(date(2026, 3, 1), [])
    lock.release()  # not ours any more: left as it is
    assert _lock_body(client, bucket)["host"] == "other-host"
    assert keys_under(s3_env, bucket) == ["p/_harvester/lock.json"]


# --- reading the lake back the way the README shows -------------------------------------------


def readme_block(marker: str) -> str:
    """The code block following ``<!-- marker -->`` in the README."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    after = readme.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_duckdb_query_over_the_s3_lake(
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
) -> None:
    path = lake_job(f"s3://{bucket}/flipsnack")
    assert run_cli("run", str(path), env=s3_env).returncode == 0
    code = readme_block("s3-duckdb").replace("my-bucket/flipsnack", f"{bucket}/flipsnack")
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)
    pages, _ = expected_rows(load_job(path), sim_config)
    sums: dict[tuple[str, Any], list[int]] = {}
    for h, start, _end, _page, views, clicks, _time in pages:
        week = start - timedelta(days=start.weekday())
        total = sums.setdefault((h, week), [0, 0])
        total[0] += views
        total[1] += clicks
    assert [(h, w.date() if hasattr(w, "date") else w, v, c) for h, w, v, c in scope["weekly"]] == [
        (h, w, v, c) for (h, w), (v, c) in sorted(sums.items())
    ]


# Put on PYTHONPATH: the Nth upload of a part file sends half its bytes (a PUT whose body is cut
# short, as a kill mid-request leaves it), then SIGKILLs the run.
KILL_ON_UPLOAD = """
import os
_N = int(os.environ.get("HARVESTER_TEST_KILL_ON_UPLOAD", "0"))
if _N:
    import http.client
    import signal
    import urllib.parse
    from harvester.lake import objects

    _calls = [0]
    _real = objects.StoreObjects._put

    def _put(self, path, data, expect):
        if not path.endswith(".parquet"):
            return _real(self, path, data, expect)
        _calls[0] += 1
        if _calls[0] < _N:
            return _real(self, path, data, expect)
        url = urllib.parse.urlsplit(os.environ["AWS_ENDPOINT_URL"])
        conn = http.client.HTTPConnection(url.hostname, url.port)
        conn.putrequest("PUT", "/" + urllib.parse.quote(path))
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        conn.send(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    objects.StoreObjects._put = _put
"""


@pytest.mark.parametrize("refresh", [False, True], ids=["first-write", "rewrite"])
def test_a_kill_mid_upload_leaves_the_old_object_and_the_rerun_is_exact(
    refresh: bool,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    path = lake_job(f"s3://{bucket}/crash", end="2026-03-05")
    job = load_job(path)
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    if refresh:
        assert run_cli("run", str(path), env=s3_env).returncode == 0
    before = {
        k: client.get_object(Bucket=bucket, Key=k)["ETag"]
        for k in keys_under(s3_env, bucket, "crash/")
        if k.endswith(".parquet")
    }
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_ON_UPLOAD)
    crash_env = {**s3_env, "PYTHONPATH": str(hook), "HARVESTER_TEST_KILL_ON_UPLOAD": "2"}
    crashed = run_cli("run", str(path), *(["--refresh"] if refresh else []), env=crash_env)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    after = {
        k: client.get_object(Bucket=bucket, Key=k)["ETag"]
        for k in keys_under(s3_env, bucket, "crash/")
        if k.endswith(".parquet")
    }
    # The first upload completed; the second, cut short, left its key as it was.
    assert len(set(after.items()) - set(before.items())) == 1
    if refresh:
        assert after.keys() == before.keys()
        assert actual_rows(job.output) == expected_rows(job, sim_config)
    rerun = run_cli("run", str(path), env=s3_env)
    assert rerun.returncode == 0, rerun.stderr
    assert actual_rows(job.output) == expected_rows(job, sim_config)


def test_a_local_output_whose_state_was_deleted_makes_no_call(
    lake_job: Callable[..., Path],
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    path = lake_job(str(tmp_path / "out"))
    assert run_cli("run", str(path), env=s3_env).returncode == 0
    shutil.rmtree(tmp_path / "out" / "_state")
    again = run_cli("run", str(path), env=s3_env)
    report = report_of(again, tmp_path / "out" / "_state" / "state.sqlite")
    assert (report["requests"], report["units_to_fetch"]) == (0, 0), again.stderr
    assert "rebuilt what is done from the dataset" in again.stderr
    job = load_job(path)
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    assert run_cli("verify", str(tmp_path / "out"), env=s3_env).returncode == 0


def test_wait_takes_the_lock_once_its_holder_lets_go(bucket: str, s3_env: dict[str, str]) -> None:
    import threading
    import time

    location = Location.parse(f"s3://{bucket}/p")
    holder = ObjectLock(location)
    holder.acquire()
    releaser = threading.Timer(0.5, holder.release)
    releaser.start()
    started = time.monotonic()
    waiter = ObjectLock(location)
    waiter.acquire(wait=True)
    assert time.monotonic() - started >= 0.5
    waiter.release()
    releaser.join()


@pytest.mark.parametrize(("where", "fmt"), [("s3", "parquet"), ("local", "delta"), ("s3", "delta")])
def test_summary_reads_an_s3_or_delta_output(
    where: str,
    fmt: str,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harvester.ops.summary import summarize

    output = str(tmp_path / "lake") if where == "local" else f"s3://{bucket}/{fmt}"
    path = lake_job(output, format=fmt)
    assert run_cli("run", str(path), env=s3_env).returncode == 0
    for name, value in s3_env.items():  # the reader takes the store's address as runs do
        monkeypatch.setenv(name, value)
    found = summarize(output)
    job = load_job(path)
    _, collections = expected_rows(job, sim_config)
    views: dict[str, int] = {}
    for row in collections:
        views[row[0]] = views.get(row[0], 0) + row[4]
    assert {c.collection_hash: c.views for c in found.collections} == views
    assert all(c.coverage.complete for c in found.collections)
    shown = run_cli("summary", output, env=s3_env)
    assert shown.returncode == 0, shown.stderr
    assert all(h in shown.stdout for h in views)
