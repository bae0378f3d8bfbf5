"""What a run costs on object storage does not grow with the lake's history.

Requests are counted at moto's S3 server (every request any client in any process sends): a
rerun with nothing to do makes the same few requests beyond the listing whether the lake holds
twenty days or eighty, and never reads a part file; a run whose state was lost reads each file
once (the plan and the progress counter share one reconcile). Every command that takes an
OUTPUT honours ``AWS_ENDPOINT_URL_S3``; ``status`` honours a job's ``storage:`` block.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from harvester.job.parse import load_job
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import actual_rows, expected_rows, job_dict, run_cli
from tests.s3_server import CountingS3Server
from tests.test_lake import ACCESS_KEY, SECRET, cached_state

# A no-op rerun: the bucket checked (1), the output record read before the lock (a HEAD and a
# GET) and under it (2: is the state's output still there, then read with its version), the
# store's conditional writes probed (4 PUTs and a delete), the lock taken (3) and released (1),
# the run's report put (1). None of it grows with the lake.
NOOP_BEYOND_LISTING = 15
HASHES = ["d3m0h45h", "x9y8z7", "f1ipb00k"]


@pytest.fixture(scope="module")
def counting_s3() -> Iterator[CountingS3Server]:
    """moto's S3 API on a loopback port, counting every request."""
    server = CountingS3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws(
    counting_s3: CountingS3Server,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The environment of a harvester child (and of this process's reads): credentials, the
    endpoint, its own cache."""
    variables = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": counting_s3.endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return {**env, **variables}


@pytest.fixture
def new_bucket(counting_s3: CountingS3Server, aws: dict[str, str]) -> Callable[[], str]:
    def create() -> str:
        name = f"costs-{uuid.uuid4().hex[:10]}"
        client = boto3.client(
            "s3",
            endpoint_url=counting_s3.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
        )
        client.create_bucket(Bucket=name)
        return name

    return create


@pytest.fixture
def daily_job(tmp_path: Path, simulator: SimulatorThread) -> Callable[..., Path]:
    """A daily job of the three flipbooks over ``days`` days, written to ``output``."""
    counter = iter(range(1000))

    def write(output: str, days: int, **overrides: Any) -> Path:
        start = date(2025, 1, 1)
        job = job_dict(simulator.base_url, Path("unused"), **overrides)
        job.update(
            output=output,
            start=start.isoformat(),
            end=(start + timedelta(days=days - 1)).isoformat(),
            collections=[{"hash": h} for h in HASHES],
        )
        path = tmp_path / f"costs{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    return write


def part_requests(server: CountingS3Server, bucket: str) -> Counter[str]:
    """Requests that named a data file of the datasets, by kind."""
    return Counter(
        kind
        for kind, _, path in server.requests
        if path.startswith(f"/{bucket}/") and path.endswith(".parquet")
    )


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_a_no_op_rerun_costs_the_same_few_requests_whatever_the_lake_holds(
    fmt: str,
    counting_s3: CountingS3Server,
    new_bucket: Callable[[], str],
    daily_job: Callable[..., Path],
    aws: dict[str, str],
) -> None:
    beyond: dict[int, int] = {}
    for days in (20, 80):
        bucket = new_bucket()
        path = daily_job(f"s3://{bucket}/lake", days, format=fmt)
        assert run_cli("run", str(path), "-q", env=aws).returncode == 0
        counting_s3.reset_counts()
        again = run_cli("run", str(path), "-q", env=aws)
        assert again.returncode == 0, again.stderr
        counts = counting_s3.counts(bucket)
        assert not part_requests(counting_s3, bucket), counting_s3.requests  # no file read
        beyond[days] = sum(counts.values()) - counts["LIST"]
        assert counts["LIST"] <= (4 if fmt == "delta" else 2), counts  # one listing per dataset
    if fmt == "parquet":
        assert beyond[20] == beyond[80], beyond  # independent of the history
        assert beyond[80] <= NOOP_BEYOND_LISTING, beyond
    else:  # opening each table replays its log since the last checkpoint: 10 entries at most
        assert beyond[80] <= NOOP_BEYOND_LISTING + 2 * (2 + 2 * 10), beyond


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_a_lost_state_is_rebuilt_in_one_pass_reading_each_file_once(
    fmt: str,
    counting_s3: CountingS3Server,
    new_bucket: Callable[[], str],
    daily_job: Callable[..., Path],
    aws: dict[str, str],
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
) -> None:
    bucket = new_bucket()
    output = f"s3://{bucket}/lake"
    path = daily_job(output, 30, format=fmt)
    assert run_cli("run", str(path), "-q", env=aws).returncode == 0
    cached_state(output, aws).unlink()
    counting_s3.reset_counts()
    simulator.reset_counters()
    # The progress counter runs (it is on by default): it shares the run's one reconcile.
    rebuilt = run_cli("run", str(path), "--progress-every", "60", env=aws)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert sum(simulator.counters()["successes"].values()) == 0
    assert rebuilt.stderr.count("rebuilt what is done from the dataset") == 1
    reads = Counter(p for k, _, p in counting_s3.requests if p.endswith(".parquet"))
    assert len(reads) == 2 * 30  # every file of both datasets, each read once:
    assert max(reads.values()) <= 2, reads.most_common(3)  # its footer and its columns
    assert actual_rows(load_job(path).output) == expected_rows(load_job(path), sim_config)


def test_every_command_on_an_output_honours_the_s3_endpoint_variable(
    new_bucket: Callable[[], str],
    daily_job: Callable[..., Path],
    aws: dict[str, str],
) -> None:
    # AWS_ENDPOINT_URL_S3 alone (the service-specific variable): pyarrow, deltalake and boto3
    # all get it from the harvester.
    env = {k: v for k, v in aws.items() if k != "AWS_ENDPOINT_URL"}
    env["AWS_ENDPOINT_URL_S3"] = aws["AWS_ENDPOINT_URL"]
    output = f"s3://{new_bucket()}/delta"
    path = daily_job(output, 5, format="delta")
    assert run_cli("run", str(path), "-q", env=env).returncode == 0
    for command, expect in (
        (["summary", output], "3 collections"),
        (["verify", output], "agree"),
        (["runs", output], "nothing to do"),
        (["maintain", output], "compacted"),
    ):
        if command[0] == "runs":
            assert run_cli("run", str(path), "-q", env=env).returncode == 0
        done = run_cli(*command, env=env)
        assert done.returncode == 0, (command, done.stderr)
        assert expect in done.stdout, (command, done.stdout)


def test_status_without_a_state_reads_the_lakes_reports_at_the_jobs_endpoint(
    new_bucket: Callable[[], str],
    daily_job: Callable[..., Path],
    aws: dict[str, str],
    tmp_path: Path,
) -> None:
    # The endpoint in the job's storage: block only, not in the environment.
    env = {k: v for k, v in aws.items() if k != "AWS_ENDPOINT_URL"}
    storage = {"endpoint": aws["AWS_ENDPOINT_URL"], "region": "us-east-1"}
    output = f"s3://{new_bucket()}/lake"
    path = daily_job(output, 5, storage=storage)
    assert run_cli("run", str(path), "-q", env=env).returncode == 0
    elsewhere = {**env, "XDG_CACHE_HOME": str(tmp_path / "another-machine")}
    said = run_cli("status", str(path), env=elsewhere)
    assert said.returncode == 0, said.stderr
    assert "no local state here" in said.stdout
    assert "last run: finished" in said.stdout, said.stdout
    report = json.loads(next((tmp_path / "cache").rglob("last-run.json")).read_text())
    assert report["exit_code"] == 0
