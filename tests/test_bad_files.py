"""Unreadable files are named, never a crash: a truncated or garbage part file (local disk, and
the S3 server) is moved aside by the run, its partition fetched again, exactly; ``summary``
leaves it out and names it; ``verify`` names it (exit 1). A broken Delta log entry is exit 74,
named, with what to do. No case exits 70 ("a bug in harvester")."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from harvester.errors import EXIT_LOCAL_IO
from harvester.job.model import Job
from harvester.job.parse import load_job
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from harvester.layout import LAKE_QUARANTINE_DIR
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import actual_rows, expected_rows, run_cli
from tests.test_delta import delta_rows
from tests.test_lake import bucket, lake_job, report_of, s3_env, s3_server, sim_config

__all__ = ["bucket", "lake_job", "s3_env", "s3_server", "sim_config"]  # fixtures

DAY = "2026-03-05"
DAYS = {"start": "2026-03-01", "end": "2026-03-10"}
HASHES = [{"hash": h} for h in ("d3m0h45h", "x9y8z7", "f1ipb00k")]


def damaged(body: bytes, how: str) -> bytes:
    """A part file's bytes as a crash or a bad copy leaves them."""
    if how == "truncated":
        return body[: len(body) // 2]
    if how == "empty":
        return b""
    return b"<html>503 Service Unavailable</html>\n" * 7  # garbage from a failed download


class Lake:
    """An output (local or on the S3 server) whose part files a test can read and replace."""

    def __init__(self, job: Job, env: dict[str, str]) -> None:
        self.job, self.location = job, job.output
        self._s3 = None
        if not self.location.is_local:
            self._s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])

    def key(self, name: str, day: str = DAY) -> str:
        return self.location.join(name, f"period_start={day}", "part-0.parquet")

    def read(self, path: str) -> bytes:
        if self._s3 is None:
            return Path(path).read_bytes()
        bucket, _, key = path.partition("/")
        body: bytes = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def write(self, path: str, body: bytes) -> None:
        if self._s3 is None:
            Path(path).write_bytes(body)
        else:
            bucket, _, key = path.partition("/")
            self._s3.put_object(Bucket=bucket, Key=key, Body=body)

    def quarantined(self) -> list[str]:
        root = self.location.join(*LAKE_QUARANTINE_DIR.split("/"))
        if self._s3 is None:
            return sorted(str(p) for p in Path(root).rglob("*") if p.is_file())
        bucket, _, prefix = root.partition("/")
        found = self._s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return sorted(f"{bucket}/{o['Key']}" for o in found)


def served(simulator: SimulatorThread) -> dict[str, int]:
    """Successful answers by unit (``hash|start|end``) since the last reset."""
    result: dict[str, int] = simulator.counters()["successes"]
    return result


@pytest.mark.parametrize(
    ("where", "name", "how"),
    [
        ("local", COLLECTION_STATS, "garbage"),
        ("local", PAGE_STATS, "truncated"),
        ("local", COLLECTION_STATS, "empty"),
        ("s3", COLLECTION_STATS, "truncated"),
        ("s3", PAGE_STATS, "garbage"),
    ],
)
def test_an_unreadable_part_file_is_named_moved_aside_and_its_partition_fetched_again(
    where: str,
    name: str,
    how: str,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output = str(tmp_path / "lake") if where == "local" else f"s3://{bucket}/lake"
    path = lake_job(output, collections=HASHES, **DAYS)
    job = load_job(path)
    assert run_cli("run", str(path), "-q", env=s3_env).returncode == 0
    lake = Lake(job, s3_env)
    target = lake.key(name)
    bad = damaged(lake.read(target), how)
    lake.write(target, bad)

    summary = run_cli("summary", output, env=s3_env)
    assert summary.returncode == 0, summary.stderr
    assert f"unreadable part file, left out: {target}" in summary.stdout
    assert "3 collections" in summary.stdout  # the rest is summed up as before

    verify = run_cli("verify", output, env=s3_env)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"unreadable: {target}" in verify.stdout
    if name == COLLECTION_STATS:  # its units are missing (a page file: they lack pages)
        assert f"missing: d3m0h45h {DAY}..{DAY}" in verify.stdout

    simulator.reset_counters()
    rerun = run_cli("run", str(path), env=s3_env)
    assert rerun.returncode == 0, rerun.stderr
    assert target in rerun.stderr and "moved aside" in rerun.stderr
    # Exactly that partition's units fetched again, and the datasets exact.
    assert sorted(served(simulator)) == sorted(f"{h['hash']}|{DAY}|{DAY}" for h in HASHES)
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    (moved,) = lake.quarantined()
    assert moved.startswith(lake.location.join(LAKE_QUARANTINE_DIR, name, f"period_start={DAY}"))
    assert not moved.endswith(".parquet")  # never read as data by a *.parquet glob
    assert lake.read(moved) == bad  # kept as it was found, for a look
    state = tmp_path / "cache" if where == "s3" else Path(output) / "_state"
    report = json.loads(next(state.rglob("last-run.json")).read_text())
    (entry,) = report["unreadable_files"]
    assert (entry["path"], entry["moved_to"]) == (target, moved)
    again = run_cli("verify", output, env=s3_env)
    assert again.returncode == 0, again.stdout
    assert "agree" in again.stdout


def test_an_unreadable_file_found_when_rewriting_its_partition_is_fetched_again_next_run(
    job_file: Callable[..., Path],
    env: dict[str, str],
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
) -> None:
    # Damaged with its size and modification time kept, the listing trusts it: the run meets it
    # only when it rewrites the partition for a collection added to the job.
    path = job_file(collections=HASHES[:2], **DAYS)
    assert run_cli("run", str(path), "-q", env=env).returncode == 0
    job = load_job(path)
    part = Path(job.output.join(COLLECTION_STATS, f"period_start={DAY}", "part-0.parquet"))
    stat = part.stat()
    body = part.read_bytes()
    part.write_bytes(bytes(len(body)))  # zeros: same size
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    grown = job_file(collections=HASHES, **DAYS)
    simulator.reset_counters()
    first = run_cli("run", str(grown), env=env)
    assert first.returncode == 0, first.stderr
    assert str(part) in first.stderr and "fetched again by the next run" in first.stderr
    report = report_of(first, Path(job.output.join("_state", "state.sqlite")))
    assert report["units_lost"] == 2  # the two collections the damaged file held that day
    second = run_cli("run", str(grown), env=env)
    assert second.returncode == 0, second.stderr
    assert f"{HASHES[0]['hash']}|{DAY}|{DAY}" in served(simulator)
    assert actual_rows(job.output) == expected_rows(load_job(grown), sim_config)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_broken_delta_log_entry_is_exit_74_naming_it_and_what_to_do(
    where: str,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    tmp_path: Path,
) -> None:
    output = str(tmp_path / "delta") if where == "local" else f"s3://{bucket}/delta"
    path = lake_job(output, format="delta", collections=HASHES, **DAYS)
    assert run_cli("run", str(path), "-q", env=s3_env).returncode == 0
    lake = Lake(load_job(path), s3_env)
    entry = lake.location.join(COLLECTION_STATS, "_delta_log", f"{0:020d}.json")
    lake.write(entry, lake.read(entry)[:60])
    named = entry if where == "local" else f"s3://{entry}"
    for command in (["run", str(path)], ["summary", output], ["verify", output]):
        done = run_cli(*command, env=s3_env)
        assert done.returncode == EXIT_LOCAL_IO, (command, done.stderr)
        assert named in done.stderr and "version 0 is unreadable" in done.stderr
        assert "starts the table afresh" in done.stderr
        assert "Traceback" not in done.stderr


def test_an_unreadable_delta_data_file_leaves_the_table_and_its_partition_is_fetched_again(
    lake_job: Callable[..., Path],
    s3_env: dict[str, str],
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    from deltalake import DeltaTable

    output = tmp_path / "delta"
    path = lake_job(str(output), format="delta", collections=HASHES, **DAYS)
    job = load_job(path)
    assert run_cli("run", str(path), "-q", env=s3_env).returncode == 0
    (data,) = (output / PAGE_STATS / f"period_start={DAY}").glob("*.parquet")
    data.write_bytes(damaged(data.read_bytes(), "truncated"))
    summary = run_cli("summary", str(output), env=s3_env)
    assert summary.returncode == 0 and str(data) in summary.stdout, summary.stderr
    assert "--state NEW_PATH" in summary.stdout  # the log lists it as before: say what to do
    simulator.reset_counters()
    rerun = run_cli("run", str(path), "--state", str(tmp_path / "new.sqlite"), env=s3_env)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(served(simulator)) == sorted(f"{h['hash']}|{DAY}|{DAY}" for h in HASHES)
    assert delta_rows(job) == expected_rows(job, sim_config)
    live = DeltaTable(str(output / PAGE_STATS)).file_uris()
    assert str(data) not in live
    assert list((output / LAKE_QUARANTINE_DIR).rglob(f"{data.name}.*"))


def test_an_older_output_with_an_unreadable_file_is_migrated_around_it(
    job_file: Callable[..., Path],
    env: dict[str, str],
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
) -> None:
    # A version-1 output (files without the account column are migrated by the next run): the
    # migration steps over the damaged file; the reconcile sets it aside; the run is exact.
    path = job_file(collections=HASHES, **DAYS)
    assert run_cli("run", str(path), "-q", env=env).returncode == 0
    job = load_job(path)
    record = Path(job.output.join("_harvester", "output.json"))
    record.write_text(json.dumps({**json.loads(record.read_text()), "schema_version": 1}))
    part = Path(job.output.join(PAGE_STATS, f"period_start={DAY}", "part-0.parquet"))
    part.write_bytes(damaged(part.read_bytes(), "garbage"))
    rerun = run_cli("run", str(path), env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert str(part) in rerun.stderr and "moved aside" in rerun.stderr
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    assert json.loads(record.read_text())["schema_version"] == 2
