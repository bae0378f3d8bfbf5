"""The record tells the truth: the newest answer wins, finished periods are never shrunk, and
the dataset alone says what is done, zero-page units included, on every kind of output.

End to end against the simulator over real HTTP; runs as subprocesses where a kill or a new
machine is the point, in-process (the library, ``RunOptions(today=..., clock=...)``) where the
point is forty nights in a row.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from harvester.job.location import Location
from harvester.job.parse import load_job
from harvester.lake.fs import open_sink
from harvester.lake.output import meta_path, read_meta
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from harvester.ops.summary import summarize
from harvester.run.options import RunOptions
from harvester.run.pipeline import harvest
from harvester.simulator import SimulatorConfig, SimulatorThread
from harvester.state.store import StateStore, default_state_path
from tests.conftest import (
    API_KEY,
    API_SECRET,
    HASHES,
    SIM_LIMITS,
    actual_rows,
    clock_on,
    expected_rows,
    job_dict,
    run_cli,
)
from tests.test_lake import bucket, cached_state, keys_under, lake_job, s3_env, s3_server
from tests.test_resume import Runs, served_at_least, wait_until

__all__ = ["bucket", "lake_job", "s3_env", "s3_server"]  # fixtures, used by name

TWO = [{"hash": HASHES[0]}, {"hash": HASHES[1]}]
JobFile = Callable[..., Path]


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """Quiet days answer no pages at all (as an unopened flipbook may); a little latency."""
    return SimulatorConfig(
        seed=7,
        keys={API_KEY: API_SECRET},
        rate_limits=SIM_LIMITS,
        latency=(0.0, 0.003),
        quiet_without_pages=True,
    )


@pytest.fixture
def runs(tmp_path: Path, env: dict[str, str]) -> Iterator[Runs]:
    started = Runs(tmp_path, env)
    yield started
    started.kill_leftovers()


def report_of(state: Path) -> dict[str, Any]:
    """The last report written beside ``state``."""
    report: dict[str, Any] = json.loads((state.parent / "last-run.json").read_text())
    return report


def fetched_at(output: Path | Location, fmt: str = "parquet") -> dict[tuple[Any, ...], Any]:
    """Each unit's ``fetched_at`` as the dataset holds it."""
    table = open_sink(Location.parse(str(output)), fmt).units()
    return {
        (r["collection_hash"], r["period_start"], r["period_end"]): r["fetched_at"]
        for r in table.to_pylist()
    }


# --- the newest answer wins ------------------------------------------------------------------


def test_answers_staged_before_a_kill_never_overwrite_a_newer_harvest(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    runs: Runs,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Forty flipbooks on one day: one partition, written only once all forty are in, so a kill
    # part-way leaves answers staged and none written.
    simulator.reconfigure(latency=(0.005, 0.05))
    day = "2026-03-10"
    hashes = [{"hash": f"n3west{i:02d}"} for i in range(40)]
    path = job_file(start=day, end=day, collections=hashes)
    job = load_job(path)
    first = runs.start(path)
    wait_until(served_at_least(simulator, 12), "answers staged", first)
    first.send(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    state = default_state_path(job.output)
    with StateStore(state, readonly=True) as store:
        staged = store.counts()["staged"]
    assert staged >= 1
    assert not (job.output.path / COLLECTION_STATS).exists()  # nothing written yet

    # Meanwhile the API revises the day, and another machine (another state) harvests it all.
    revised = SimulatorConfig(**{**sim_config.__dict__, "revisions": {day: 1}})
    simulator.reconfigure(revisions=revised.revisions)
    other = tmp_path / "other" / "state.sqlite"
    runs.complete(path, "--state", str(other))
    newer = fetched_at(job.output)
    assert actual_rows(job.output) == expected_rows(job, revised)

    # The first machine comes back: its staged answers are older than the dataset's rows.
    simulator.reset_counters()
    back = runs.complete(path)
    assert report_of(state)["units_superseded"] == staged, back.stderr()
    assert report_of(state)["requests"] == 0
    assert f"dropped {staged} fetched answers: the dataset already holds newer ones" in (
        back.stderr()
    )
    assert f"units: {staged} fetched answers dropped" in back.stderr()
    assert actual_rows(job.output) == expected_rows(job, revised)
    assert fetched_at(job.output) == newer  # not one moved backwards
    with StateStore(state, readonly=True) as store:
        assert (store.counts()["staged"], store.counts()["done"]) == (0, len(hashes))
    assert run_cli("verify", str(job.output), env=env).returncode == 0


# --- finished periods are never shrunk -------------------------------------------------------


@pytest.mark.parametrize("granularity", ["week", "month"])
def test_forty_nights_with_a_rolling_start_leave_what_one_run_over_their_union_writes(
    granularity: str,
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    # What the README recommends for a nightly job: start -30d, end yesterday.
    nights = [date(2026, 1, 10) + timedelta(days=i) for i in range(40)]
    path = job_file(granularity=granularity, start="-30d", end="yesterday", collections=TWO)
    for night in nights:
        simulator.reset_counters()
        report = harvest(
            load_job(path, today=night), RunOptions(today=night, clock=clock_on(night)), env
        )
        assert report.exit_code == 0, report.summary()
        # After the first night: the grown current period of each collection, and a new one
        # at most; nothing finished is fetched again.
        if night > nights[0]:
            assert simulator.counters()["requests"] <= 2 * len(TWO), (night, report.summary())
    output = load_job(path, today=nights[-1]).output

    first, last = nights[0] - timedelta(days=30), nights[-1] - timedelta(days=1)
    union = tmp_path / "union.yaml"
    whole = {"start": first.isoformat(), "end": last.isoformat(), "collections": TWO}
    job = job_dict(simulator.base_url, tmp_path / "union", granularity=granularity, **whole)
    union.write_text(yaml.safe_dump(job))
    once = load_job(union)
    assert (
        harvest(once, RunOptions(today=nights[-1], clock=clock_on(nights[-1])), env).exit_code == 0
    )
    assert actual_rows(output) == actual_rows(once.output) == expected_rows(once, sim_config)

    # The first period starts on the first night's start (2025-12-11), the last one ends
    # yesterday (2026-02-17): both partial, counted apart; every period is there.
    for c in summarize(output.path).collections:
        assert (c.first, c.last) == (first, last)
        assert c.coverage.complete and c.coverage.partial == 2, c.coverage
    _, rows = actual_rows(output)
    for h in (c["hash"] for c in TWO):
        flags = [r[7] for r in rows if r[0] == h]  # `complete`, period by period
        assert flags == [False, *[True] * (len(flags) - 2), False]


# --- the dataset alone says what is done ------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "fmt"),
    [
        ("local", "parquet"),
        ("s3", "parquet"),
        ("local", "delta"),
        ("s3", "delta"),
        ("local", "iceberg"),
    ],
)
def test_a_new_state_on_a_lake_with_zero_page_days_makes_no_call(
    where: str,
    fmt: str,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    simulator: SimulatorThread,
    tmp_path: Path,
) -> None:
    output = str(tmp_path / "lake") if where == "local" else f"s3://{bucket}/zero"
    # March: with this seed, three of these flipbooks' days have no traffic at all.
    everyone = [{"hash": h} for h in HASHES]
    path = lake_job(output, format=fmt, end="2026-03-31", collections=everyone)
    assert run_cli("run", str(path), env=s3_env).returncode == 0
    rows = open_sink(Location.parse(output), fmt).read(COLLECTION_STATS)
    asked = pc.and_(rows["pages_requested"], pc.equal(rows["page_count"], 0))
    assert pc.sum(asked.cast(pa.int32())).as_py() == 3  # units asked with pages that had none

    simulator.reset_counters()
    fresh = tmp_path / "fresh" / "state.sqlite"
    again = run_cli("run", str(path), "--state", str(fresh), env=s3_env)
    assert again.returncode == 0, again.stderr
    assert simulator.counters()["requests"] == 0, again.stderr
    assert report_of(fresh)["units_to_fetch"] == 0
    assert "rebuilt what is done from the dataset" in again.stderr


@pytest.mark.parametrize("where", ["local", "s3"])
def test_verify_finds_a_deleted_page_partition_and_the_next_run_fetches_it(
    where: str,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output = str(tmp_path / "lake") if where == "local" else f"s3://{bucket}/pages"
    path = lake_job(output)
    job = load_job(path)
    assert run_cli("run", str(path), env=s3_env).returncode == 0
    assert run_cli("verify", output, env=s3_env).returncode == 0
    day = date(2026, 3, 6)
    pages = f"{PAGE_STATS}/period_start={day.isoformat()}/part-0.parquet"
    if where == "local":
        (tmp_path / "lake" / pages).unlink()
    else:
        boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).delete_object(
            Bucket=bucket, Key=f"pages/{pages}"
        )
    _, collections = expected_rows(job, sim_config)
    paged = sorted(r[0] for r in collections if r[1] == day and r[9] > 0)
    assert paged  # that day's units with pages: their page rows are gone

    check = run_cli("verify", output, env=s3_env)
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"{len(paged)} asked with page statistics whose page rows are missing" in check.stdout
    for h in paged:
        assert f"missing pages: {h} {day}..{day}" in check.stdout

    simulator.reset_counters()
    again = run_cli("run", str(path), env=s3_env)
    assert again.returncode == 0, again.stderr
    assert simulator.counters()["requests"] == len(paged), again.stderr
    assert "have no page rows in the dataset" in again.stderr
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    assert run_cli("verify", output, env=s3_env).returncode == 0


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_state_whose_output_vanished_is_discarded_and_rebuilt(
    where: str,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output = str(tmp_path / "lake") if where == "local" else f"s3://{bucket}/wiped"
    path = lake_job(output)
    job = load_job(path)
    assert run_cli("run", str(path), env=s3_env).returncode == 0
    if where == "local":  # everything but the state beside it: a lake moved away
        state = tmp_path / "lake" / "_state" / "state.sqlite"
        for child in (tmp_path / "lake").iterdir():
            if child.name != "_state":
                shutil.rmtree(child)
    else:  # a test bucket wiped; the state stays in this machine's cache
        state = cached_state(output, s3_env)
        client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
        for key in keys_under(s3_env, bucket):
            client.delete_object(Bucket=bucket, Key=key)
    assert state.is_file() and read_meta(job.output) is None

    simulator.reset_counters()
    again = run_cli("run", str(path), env=s3_env)
    assert again.returncode == 0, again.stderr
    assert "which is no longer at" in again.stderr and "the state is discarded" in again.stderr
    units = len(expected_rows(job, sim_config)[1])
    assert simulator.counters()["requests"] == units  # nothing trusted that is not there
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    assert run_cli("verify", output, env=s3_env).returncode == 0

    # A state bound to a different output, alive elsewhere, is still refused.
    elsewhere = lake_job(str(tmp_path / "elsewhere"))
    refused = run_cli("run", str(elsewhere), "--state", str(state), env=s3_env)
    assert refused.returncode == 2, refused.stderr
    assert "this state belongs to output" in refused.stderr
    assert not (tmp_path / "elsewhere").exists()


# --- outputs written before the columns existed -----------------------------------------------

NEW_COLUMNS = ["complete", "pages_requested", "page_count"]


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_an_output_from_before_the_columns_is_read_and_upgraded_without_a_call(
    fmt: str,
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    path = job_file(format=fmt)
    job = load_job(path)
    assert run_cli("run", str(path), env=env).returncode == 0
    _downgrade(job.output.path, fmt)
    shutil.rmtree(job.output.path / "_state")

    # Read as it is: the new columns are null in every old row.
    old = open_sink(job.output, fmt).read(COLLECTION_STATS)
    assert all(old[c].null_count == old.num_rows for c in NEW_COLUMNS)
    assert summarize(job.output.path).collections  # summary reads it

    # A new machine: no call (pages were there for every unit: the old rule), nothing lost.
    simulator.reset_counters()
    again = run_cli("run", str(path), env=env)
    assert again.returncode == 0, again.stderr
    assert simulator.counters()["requests"] == 0, again.stderr
    meta = read_meta(job.output)
    assert meta is not None and meta.schema_version == 2
    assert run_cli("verify", str(job.output), env=env).returncode == 0

    # A partition written again gets the columns; the rows it keeps stay null there.
    simulator.reset_counters()
    refreshed = run_cli("run", str(path), "--refresh", env=env)
    assert refreshed.returncode == 0, refreshed.stderr
    rows = open_sink(job.output, fmt).read(COLLECTION_STATS)
    assert all(rows[c].null_count == 0 for c in NEW_COLUMNS)
    expected = expected_rows(job, sim_config)[1]
    got = rows.select(["collection_hash", "period_start", "period_end", *NEW_COLUMNS])
    assert sorted(tuple(r.values()) for r in got.to_pylist()) == [
        (*r[:3], *r[7:]) for r in expected
    ]


def _downgrade(output: Path, fmt: str) -> None:
    """Make ``output`` what an older harvester wrote: no new columns, record version 1."""
    record = meta_path(output)
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "schema_version": 1}))
    if fmt == "parquet":
        for file in (output / COLLECTION_STATS).rglob("*.parquet"):
            pq.write_table(pq.read_table(file).drop(NEW_COLUMNS), file)
        return
    import deltalake

    table = deltalake.DeltaTable(str(output / COLLECTION_STATS)).to_pyarrow_table()
    shutil.rmtree(output / COLLECTION_STATS)
    deltalake.write_deltalake(
        str(output / COLLECTION_STATS), table.drop(NEW_COLUMNS), partition_by=["period_start"]
    )
