"""``format: delta``: both datasets as Delta tables, locally and on the S3 server, read back with
deltalake exactly; after a kill -9, after a refresh, and after ``harvester maintain``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from harvester.job.location import Location
from harvester.job.model import Job
from harvester.job.parse import load_job
from harvester.lake.delta import delta_storage_options
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import API_KEY, API_SECRET, actual_rows, expected_rows, run_cli
from tests.test_lake import bucket, cached_state, lake_job, report_of, s3_env, s3_server
from tests.test_resume import LIMITS, Runs, served_at_least, successes, wait_until

__all__ = ["bucket", "lake_job", "s3_env", "s3_server"]  # fixtures shared with test_lake


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """Enough latency for a kill to land mid-run."""
    return SimulatorConfig(
        seed=11, keys={API_KEY: API_SECRET}, rate_limits=LIMITS, latency=(0.005, 0.05)
    )


def delta_rows(job: Job) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What the job's Delta tables hold at their latest version (without fetched_at)."""
    location = job.output
    options = delta_storage_options(location)

    def rows(name: str) -> list[tuple[Any, ...]]:
        if location.is_local:
            uri = str(Path(location.join(name)).absolute())
        else:
            uri = f"s3://{location.join(name)}"
        table = DeltaTable(uri, storage_options=options).to_pyarrow_table()
        table = table.drop(["fetched_at", "account"])
        keys = ["collection_hash", "period_start", "period_end"]
        if name == PAGE_STATS:
            keys.append("page")
        columns = keys + [c for c in table.column_names if c not in keys]
        return sorted(tuple(r[c] for c in columns) for r in table.to_pylist())

    return rows(PAGE_STATS), rows(COLLECTION_STATS)


@pytest.fixture
def delta_runs(tmp_path: Path, s3_env: dict[str, str]) -> Iterator[Runs]:
    started = Runs(tmp_path, s3_env)
    yield started
    started.kill_leftovers()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_delta_tables_read_back_exactly_and_a_new_state_makes_no_call(
    where: str,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output = str(tmp_path / "delta") if where == "local" else f"s3://{bucket}/delta"
    path = lake_job(output, format="delta")
    job = load_job(path)
    first = run_cli("run", str(path), env=s3_env)
    assert first.returncode == 0, first.stderr
    assert delta_rows(job) == expected_rows(job, sim_config)
    assert actual_rows(output) == expected_rows(job, sim_config)  # read_dataset: the log's rows
    # Every partition of the backfill in one commit per table, not one commit per partition.
    assert _version(job, COLLECTION_STATS) == 0
    state = cached_state(output, s3_env) if where == "s3" else Path(output, "_state", "x")
    assert report_of(first, state)["commits"] == 1
    fresh = tmp_path / "fresh" / "state.sqlite"
    new = run_cli("run", str(path), "--state", str(fresh), env=s3_env)
    assert report_of(new, fresh)["requests"] == 0, new.stderr
    # The output holds one format: a Parquet job on it is refused before any request.
    parquet = run_cli("run", str(lake_job(output)), env=s3_env)
    assert parquet.returncode == 2
    assert "holds delta datasets" in parquet.stderr


def _version(job: Job, name: str) -> int:
    location = job.output
    uri = (
        str(Path(location.join(name)).absolute())
        if location.is_local
        else f"s3://{location.join(name)}"
    )
    return int(DeltaTable(uri, storage_options=delta_storage_options(location)).version())


@pytest.mark.parametrize("where", ["local", "s3"])
def test_delta_after_kill_9_and_after_a_refresh_is_exact(
    where: str,
    lake_job: Callable[..., Path],
    bucket: str,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    delta_runs: Runs,
    tmp_path: Path,
    s3_env: dict[str, str],
) -> None:
    hashes = [{"hash": h} for h in ("d3m0h45h", "x9y8z7", "f1ipb00k")]
    output = str(tmp_path / "killed") if where == "local" else f"s3://{bucket}/killed"
    path = lake_job(
        output, format="delta", start="2026-01-01", end="2026-01-31", collections=hashes
    )
    job = load_job(path)
    run = delta_runs.start(path)
    wait_until(served_at_least(simulator, max(40, successes(simulator) + 1)), "answers", run)
    run.send(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    delta_runs.complete(path)
    assert delta_rows(job) == expected_rows(job, sim_config)
    version = _version(job, COLLECTION_STATS)
    delta_runs.complete(path, "--refresh")
    assert delta_rows(job) == expected_rows(job, sim_config)  # replaced, not duplicated
    assert _version(job, COLLECTION_STATS) > version
    # What read_dataset returns is the table at its last version, not the folder's files
    # (which now hold the replaced version's files too).
    assert actual_rows(output) == expected_rows(job, sim_config)

    done = run_cli("maintain", output, "--retention-hours", "1", env=s3_env)
    assert done.returncode == 0, done.stderr
    assert "collection_stats: compacted" in done.stdout
    assert delta_rows(job) == expected_rows(job, sim_config)


def test_maintain_on_s3_and_on_a_parquet_output(
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output = f"s3://{bucket}/kept"
    path = lake_job(output, format="delta")
    assert run_cli("run", str(path), env=s3_env).returncode == 0
    done = run_cli("maintain", output, env=s3_env)
    assert done.returncode == 0, done.stderr
    assert "page_stats: compacted" in done.stdout
    assert delta_rows(load_job(path)) == expected_rows(load_job(path), sim_config)
    assert cached_state(output, s3_env).is_file()

    plain = lake_job(str(tmp_path / "plain"))
    assert run_cli("run", str(plain), env=s3_env).returncode == 0
    said = run_cli("maintain", str(tmp_path / "plain"), env=s3_env)
    assert said.returncode == 0
    assert "nothing to compact" in said.stdout
    assert Location.parse(str(tmp_path / "plain")).is_local


def _log_entries(job: Job, name: str) -> int:
    return len(list(Path(job.output.join(name, "_delta_log")).glob("*.json")))


def test_delta_batches_of_partitions_after_kill_9_and_a_refresh_are_exact(
    lake_job: Callable[..., Path],
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    tmp_path: Path,
    s3_env: dict[str, str],
) -> None:
    # Commits of 4 partitions (a real process, tests.delta_batches): a kill lands after some
    # batches were committed, others staged; page_stats may be one commit ahead.
    hashes = [{"hash": h} for h in ("d3m0h45h", "x9y8z7", "f1ipb00k")]
    output = tmp_path / "batched"
    path = lake_job(
        str(output), format="delta", start="2026-01-01", end="2026-02-28", collections=hashes
    )
    job = load_job(path)
    command = [sys.executable, "-m", "tests.delta_batches", "4", "run", str(path)]
    with open(tmp_path / "killed.log", "wb") as log:
        run = subprocess.Popen(command, env=s3_env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while _log_entries(job, COLLECTION_STATS) < 3:  # three batches committed
            assert run.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no batch committed in time"
            time.sleep(0.05)
        run.send_signal(signal.SIGKILL)
        assert run.wait(30) == -signal.SIGKILL
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    done = run_cli("run", str(path), "-q", env=s3_env)  # the default batches from here
    assert done.returncode == 0, done.stderr
    kept = report_of(done, output / "_state" / "x")
    # What the killed run committed (3 batches of 4 days x 3 flipbooks) or staged is kept.
    assert kept["units_already_done"] + kept["units_recovered"] >= 36
    assert kept["units_already_done"] + kept["units_to_fetch"] == 177
    assert delta_rows(job) == expected_rows(job, sim_config)
    refreshed = subprocess.run(
        [*command[:4], "run", str(path), "--refresh"], env=s3_env, capture_output=True, text=True
    )
    assert refreshed.returncode == 0, refreshed.stderr
    assert delta_rows(job) == expected_rows(job, sim_config)
    assert actual_rows(output) == expected_rows(job, sim_config)
    report = json.loads((output / "_state" / "last-run.json").read_text())
    assert report["partitions_written"] == 59
    assert report["commits"] == 15  # 59 partitions, 4 a commit
