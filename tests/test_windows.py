"""Correct as the calendar sees it: growing and moving windows, unfinished windows, the future,
and an output that knows what it holds. Through the CLI against the simulator unless a fake
"today" is needed, which the library takes as a parameter."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from harvester.job.parse import load_job
from harvester.lake.output import meta_path
from harvester.lake.parquet import ParquetSink
from harvester.model import Clock, Fetched, Unit
from harvester.plan.windows import iter_units
from harvester.run.options import RunOptions
from harvester.run.pipeline import harvest
from harvester.simulator import SimulatorConfig, SimulatorThread, expected_stats
from harvester.state.store import StateStore, default_state_path
from tests.conftest import HASHES, actual_rows, clock_on, expected_rows, job_dict, run_cli

JobFile = Callable[..., Path]
TWO = [{"hash": HASHES[0]}, {"hash": HASHES[1]}]


def parquet_files(output: Path) -> dict[str, bytes]:
    """Every dataset file under ``output`` and its bytes."""
    return {str(p.relative_to(output)): p.read_bytes() for p in output.rglob("*.parquet")}


def night(day: date, hour: int = 3) -> RunOptions:
    """A run on ``day``: its today, and a clock that stamps its answers that day."""
    return RunOptions(today=day, clock=clock_on(day, hour))


def assert_exact(path: Path, config: SimulatorConfig, *, today: date | None = None) -> None:
    """The output holds exactly what one run of the job file (as it is now) writes."""
    job = load_job(path, today=today)
    assert actual_rows(job.output) == expected_rows(job, config)


# --- one row per calendar period -------------------------------------------------------------

MOVING = {
    # granularity: (three ends with a fixed start, three starts with a fixed end)
    "week": (("2026-03-02", ["2026-03-10", "2026-03-11", "2026-03-12"]),
             (["2026-03-04", "2026-03-05", "2026-03-06"], "2026-03-20")),
    "month": (("2026-03-01", ["2026-04-10", "2026-04-11", "2026-04-12"]),
              (["2026-03-05", "2026-03-06", "2026-03-07"], "2026-04-20")),
    "range": (("2026-03-01", ["2026-03-10", "2026-03-11", "2026-03-12"]),
              (["2026-03-05", "2026-03-06", "2026-03-07"], "2026-03-20")),
}  # fmt: skip


@pytest.mark.parametrize("granularity", sorted(MOVING))
def test_a_growing_end_leaves_one_row_per_period(
    granularity: str,
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    start, ends = MOVING[granularity][0]
    for i, end in enumerate(ends):
        simulator.reset_counters()
        path = job_file(granularity=granularity, start=start, end=end, collections=TWO)
        done = run_cli("run", str(path), env=env)
        assert done.returncode == 0, done.stderr
        if i:  # only the grown period of each collection is fetched again
            assert simulator.counters()["requests"] == len(TWO), done.stderr
            assert "units: 2 re-fetched because their calendar period's window changed" in (
                done.stderr
            )
        assert_exact(path, sim_config)


@pytest.mark.parametrize("granularity", sorted(MOVING))
def test_a_start_that_moves_later_leaves_finished_periods_as_they_are_stored(
    granularity: str,
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    # As `start: -30d` moves each night: the first period's window would shrink at its start.
    # It is stored final, so it stays as it is; only a period not stored yet (here: a
    # collection new to the job) is clipped to the new start.
    starts, end = MOVING[granularity][1]
    first = job_file(granularity=granularity, start=starts[0], end=end, collections=TWO)
    assert run_cli("run", str(first), env=env).returncode == 0
    before = parquet_files(load_job(first).output.path)
    newcomer = {"hash": HASHES[2]}
    for start in starts[1:]:
        simulator.reset_counters()
        path = job_file(granularity=granularity, start=start, end=end, collections=TWO)
        done = run_cli("run", str(path), env=env)
        assert done.returncode == 0, done.stderr
        assert simulator.counters()["requests"] == 0, done.stderr
        assert parquet_files(load_job(path).output.path) == before  # not a byte rewritten
    path = job_file(
        granularity=granularity, start=starts[-1], end=end, collections=[*TWO, newcomer]
    )
    assert run_cli("run", str(path), env=env).returncode == 0
    union = job_file(
        granularity=granularity,
        start=starts[0],
        end=end,
        collections=[*TWO, {**newcomer, "start": starts[-1]}],
    )
    assert_exact(union, sim_config)


def test_an_output_from_before_the_period_identity_is_repaired_by_its_first_run(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    # What three nightly runs of a weekly job left before: three windows of one week.
    monday = date(2026, 3, 2)
    output = load_job(job_file()).output.path
    sink = ParquetSink(output)
    for night, end in enumerate((monday + timedelta(days=d) for d in (1, 2, 3)), start=1):
        at = datetime(2026, 3, 2 + night, 3, tzinfo=UTC)
        sink.write_partition(monday, [Fetched(Unit(HASHES[0], monday, end), at, 1, 1, 1, 1, ())])
    assert len(sink.units()) == 3
    path = job_file(granularity="week", start="2026-03-02", end="2026-03-05", collections=TWO[:1])
    done = run_cli("run", str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert "removed 2 older windows of calendar periods that held several" in done.stderr
    assert_exact(path, sim_config)
    assert json.loads(meta_path(output).read_text())["granularity"] == "week"


# --- unfinished windows and the future -------------------------------------------------------


def test_a_window_that_holds_today_is_provisional_until_fetched_after_its_end(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    today = date(2026, 3, 10)  # the run's "today", a parameter of harvest()
    path = job_file(start="2026-03-08", end="today", collections=TWO[:1])
    report = harvest(load_job(path, today=today), night(today), env)
    assert report.units_committed == 3 and report.exit_code == 0
    job = load_job(path, today=today)
    with StateStore(default_state_path(job.output), readonly=True) as store:
        assert store.counts()["provisional"] == 1
    status = run_cli("status", str(path), env=env)
    assert "(1 provisional: their window had not ended" in status.stdout

    # Later the same day the API's figures for today have grown: the next run fetches today again.
    revised = replace(sim_config, revisions={today.isoformat(): 1})
    simulator.reconfigure(revisions=revised.revisions)
    simulator.reset_counters()
    again = harvest(job, night(today, hour=15), env)
    assert simulator.counters()["requests"] == 1 and again.units_provisional == 1
    assert actual_rows(job.output) == expected_rows(job, revised)

    # The first run after its end fetches it once more, and then it is final.
    tomorrow = today + timedelta(days=1)
    simulator.reset_counters()
    after = harvest(job, night(tomorrow), env)
    assert simulator.counters()["requests"] == 1 and after.units_provisional == 1
    simulator.reset_counters()
    final = harvest(job, night(tomorrow + timedelta(days=1)), env)
    assert simulator.counters()["requests"] == 0 and final.outcome == "nothing to do"
    assert actual_rows(job.output) == expected_rows(job, revised)


def test_a_range_into_the_future_harvests_only_days_that_have_begun(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    today = date(2026, 3, 10)
    path = job_file(start="2026-03-08", end="2026-12-31", collections=TWO[:1])
    job = load_job(path)
    report = harvest(job, night(today), env)
    not_begun = (date(2026, 12, 31) - today).days
    assert report.units_committed == 3 and report.units_not_begun == not_begun
    assert simulator.counters()["requests"] == 3
    assert f"units: {not_begun} not begun yet (after 2026-03-10): not fetched" in report.summary()
    began = replace(job, collections=(replace(job.collections[0], end=today),))
    assert actual_rows(job.output) == expected_rows(began, sim_config)
    with StateStore(default_state_path(job.output), readonly=True) as store:
        counts = store.counts()
        assert counts["done"] == 3 and counts["provisional"] == 1  # nothing recorded beyond

    later = today + timedelta(days=2)
    simulator.reset_counters()
    report = harvest(job, night(later), env)  # today again (now over), and two more
    assert simulator.counters()["requests"] == 3
    began = replace(job, collections=(replace(job.collections[0], end=later),))
    assert actual_rows(job.output) == expected_rows(began, sim_config)


# --- the output knows what it holds -----------------------------------------------------------


def test_two_outputs_on_one_state_are_refused(
    job_file: JobFile, simulator: SimulatorThread, tmp_path: Path, env: dict[str, str]
) -> None:
    state = tmp_path / "shared-state.sqlite"
    first = job_file()
    assert run_cli("run", str(first), "--state", str(state), env=env).returncode == 0
    second_output = tmp_path / "second"
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump(job_dict(simulator.base_url, second_output)))
    simulator.reset_counters()
    done = run_cli("run", str(second), "--state", str(state), env=env)
    assert done.returncode == 2, done.stderr
    first_id = json.loads(meta_path(load_job(first).output).read_text())["id"]
    assert f"this state belongs to output {first_id}" in done.stderr
    assert str(second_output) in done.stderr and str(state) in done.stderr
    assert simulator.counters()["requests"] == 0 and not second_output.exists()


def test_another_granularity_on_an_output_is_refused(
    job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    daily = job_file()
    assert run_cli("run", str(daily), env=env).returncode == 0
    output = load_job(daily).output.path
    before = parquet_files(output)
    simulator.reset_counters()
    done = run_cli("run", str(job_file(granularity="week")), env=env)
    assert done.returncode == 2, done.stderr
    assert "holds 'day' windows; this job asks for 'week'" in done.stderr
    assert done.stderr.startswith("error: invalid job:")
    assert simulator.counters()["requests"] == 0 and parquet_files(output) == before


def test_turning_page_stats_on_fetches_every_unit_again_and_off_is_refused(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    without = job_file(page_stats=False)
    assert run_cli("run", str(without), env=env).returncode == 0
    output = load_job(without).output.path
    assert not (output / "page_stats").exists()
    units = list(iter_units(load_job(without)))
    simulator.reset_counters()
    with_pages = job_file(page_stats=True)
    done = run_cli("run", str(with_pages), env=env)
    assert done.returncode == 0, done.stderr
    assert simulator.counters()["requests"] == len(units)
    assert_exact(with_pages, sim_config)
    assert json.loads(meta_path(output).read_text())["page_stats"] is True
    refused = run_cli("run", str(without), env=env)
    assert refused.returncode == 2 and "holds page statistics" in refused.stderr


# --- time is a parameter ---------------------------------------------------------------------


class FakeClock:
    """A clock whose sleeps advance it at once."""

    def __init__(self, start: datetime) -> None:
        self.wall = start
        self.mono = 1000.0
        self.slept = 0.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)
        self.slept += seconds


def test_a_whole_harvest_runs_on_a_fake_clock(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    # Two calls per 10 s: 12 units take at least 50 s of the run's clock, none of the wall's.
    simulator.reconfigure(enforce_limits=False)
    fake = FakeClock(datetime(2026, 3, 20, 3, 15, tzinfo=UTC))
    path = job_file(
        start="2026-03-01",
        end="2026-03-06",
        collections=TWO,
        api={"base_url": simulator.base_url, "rate_limits": [{"calls": 2, "seconds": 10}]},
    )
    job = load_job(path)
    clock = Clock(now=fake.now, monotonic=fake.monotonic, sleep=fake.sleep)
    report = harvest(job, RunOptions(clock=clock), env)
    assert report.exit_code == 0 and report.units_committed == 12
    assert fake.slept >= 50 and report.elapsed_seconds >= 50
    assert report.today == "2026-03-20"
    stamps = [
        t.as_py()
        for f in (job.output.path / "collection_stats").rglob("*.parquet")
        for t in pq.read_table(f)["fetched_at"]
    ]
    assert len(stamps) == 12  # every answer stamped by the run's clock, not the wall's
    assert all(datetime(2026, 3, 20, 3, 15, tzinfo=UTC) <= t <= fake.wall for t in stamps)
    assert actual_rows(job.output) == expected_rows(job, sim_config)


def test_counts_add_up_after_a_recovery(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    path = job_file()
    job = load_job(path)
    units = list(iter_units(job))
    at = datetime(2026, 3, 20, tzinfo=UTC)
    killed = []  # what a killed run had fetched and staged but not written
    for unit in units[:5]:
        data = expected_stats(unit.collection_hash, unit.start, unit.end, sim_config)
        pages = tuple((p["page"], p["views"], p["clicks"], p["time_spent"]) for p in data["pages"])
        figures = (data["impressions"], data["views"], data["time_spent"], data["downloads"])
        killed.append(Fetched(unit, at, *figures, pages))
    with StateStore(default_state_path(job.output), granularity="day") as store:
        store.stage(killed)
    report = harvest(job, RunOptions(), env)
    assert report.units_recovered == 5 and report.units_committed == len(units) - 5
    assert report.units_already_done == 5
    parts = (
        report.units_already_done
        + report.units_committed
        + report.units_failed
        + report.units_gone
        + report.units_not_begun
        + report.units_not_attempted
    )
    assert parts == report.units_in_job == len(units)
    assert simulator.counters()["requests"] == len(units) - 5
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    summary = report.summary()
    assert f"{len(units) - 5} units fetched and committed" in summary
    assert "5 already done" in summary and f"of {len(units)} in the job" in summary


def test_through_the_cli_today_is_provisional_and_the_future_is_not_harvested(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    # The real today: the job runs from two days ago into next month.
    today = datetime.now(UTC).date()
    end = today + timedelta(days=30)
    path = job_file(
        start=(today - timedelta(days=2)).isoformat(), end=end.isoformat(), collections=TWO[:1]
    )
    job = load_job(path)
    done = run_cli("run", str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert "units: 30 not begun yet" in done.stderr
    began = replace(job, collections=(replace(job.collections[0], end=today),))
    assert actual_rows(job.output) == expected_rows(began, sim_config)
    assert "(1 provisional" in run_cli("status", str(path), env=env).stdout

    # The API's figures for today move on: the next run fetches today, and only today, again.
    revised = replace(sim_config, revisions={today.isoformat(): 1})
    simulator.reconfigure(revisions=revised.revisions)
    simulator.reset_counters()
    again = run_cli("run", str(path), env=env)
    assert again.returncode == 0, again.stderr
    if datetime.now(UTC).date() == today:  # not across midnight
        assert simulator.counters()["requests"] == 1
        assert "units: 1 re-fetched because their window had not ended" in again.stderr
        assert actual_rows(job.output) == expected_rows(began, revised)
