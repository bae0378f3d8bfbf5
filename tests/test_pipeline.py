"""End to end, in-process: a job harvested from the simulator over real HTTP, read back exactly."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from harvester.errors import UnitsFailed
from harvester.job.parse import load_job
from harvester.plan.windows import iter_units
from harvester.run.options import RunOptions
from harvester.run.pipeline import harvest
from harvester.simulator import SimulatorConfig, SimulatorProcess, SimulatorThread
from harvester.state.store import StateStore, default_state_path
from tests.conftest import HASHES, actual_rows, assert_complete, expected_rows

JobFile = Callable[..., Path]


@pytest.mark.parametrize("granularity", ["day", "week", "month", "range"])
def test_exact_rows_for_every_granularity(
    granularity: str,
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    path = job_file(granularity=granularity, end="2026-04-09")
    job = load_job(path)
    report = harvest(job, RunOptions(), env)
    assert report.exit_code == 0, report.summary()
    assert_complete(path, sim_config)
    units = list(iter_units(job))
    counters = simulator.counters()
    # Exactly one successful call per unit, and no other call at all.
    assert counters["requests"] == len(units) == report.units_committed
    assert sorted(counters["successes"].values()) == [1] * len(units)
    assert report.page_rows_written == len(expected_rows(job, sim_config)[0])


def test_second_run_makes_no_request_and_adds_no_row(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    path = job_file()
    job = load_job(path)
    first = harvest(job, RunOptions(), env)
    before = actual_rows(job.output)
    simulator.reset_counters()
    second = harvest(job, RunOptions(), env)
    assert second.exit_code == 0 and second.outcome == "nothing to do"
    assert simulator.counters()["requests"] == 0
    assert second.units_already_done == first.units_committed
    assert actual_rows(job.output) == before
    assert_complete(path, sim_config)


def test_refresh_flag_refetches_everything_without_duplicates(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    path = job_file()
    job = load_job(path)
    first = harvest(job, RunOptions(), env)
    simulator.reset_counters()
    again = harvest(job, RunOptions(refresh=True), env)
    assert again.exit_code == 0
    assert simulator.counters()["requests"] == first.units_committed
    assert_complete(path, sim_config)


def test_refresh_days_replaces_recent_rows(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    path = job_file(refresh_days=2, collections=[{"hash": HASHES[0]}, {"hash": HASHES[1]}])
    job = load_job(path)
    today = date(2026, 3, 15)  # the job ends 03-14: refresh_days 2 covers 03-13 and 03-14
    harvest(job, RunOptions(today=today), env)
    _, old_collections = actual_rows(job.output)

    changed = {"2026-03-13": 1, "2026-03-14": 1}
    simulator.reconfigure(revisions=changed, pages={HASHES[0]: 2})
    simulator.reset_counters()
    report = harvest(job, RunOptions(today=today), env)
    assert report.exit_code == 0
    assert simulator.counters()["requests"] == 4  # 2 collections × 2 days, nothing else
    new_config = SimulatorConfig(
        **{**sim_config.__dict__, "revisions": changed, "pages": {HASHES[0]: 2}}
    )
    pages, collections = actual_rows(job.output)
    recent = {date(2026, 3, 13), date(2026, 3, 14)}
    # Older days untouched, recent days replaced (not appended), vanished pages gone.
    assert [r for r in collections if r[1] not in recent] == [
        r for r in old_collections if r[1] not in recent
    ]
    assert [r for r in collections if r[1] in recent] != [
        r for r in old_collections if r[1] in recent
    ]
    assert len(collections) == len(old_collections)
    recent_pages_of_0 = {r[3] for r in pages if r[0] == HASHES[0] and r[1] in recent}
    assert recent_pages_of_0 == {1, 2}
    expected_collections = [r for r in expected_rows(job, new_config)[1] if r[1] in recent]
    assert [r for r in collections if r[1] in recent] == expected_collections


def test_rate_limits_hold_at_concurrency_16(
    tmp_path: Path, output_dir: Path, env: dict[str, str]
) -> None:
    from harvester.model import RateLimit
    from tests.conftest import API_KEY, API_SECRET, job_dict

    limits = (RateLimit(8, 0.5), RateLimit(30, 3.0))
    config = SimulatorConfig(
        seed=3, keys={API_KEY: API_SECRET}, rate_limits=limits, latency=(0.01, 0.3)
    )
    # In its own process, as the real API is: a server thread sharing our GIL stamps arrivals late.
    with SimulatorProcess(config) as sim:
        job = job_dict(
            sim.base_url, output_dir, concurrency=16, start="2026-03-01", end="2026-03-15"
        )
        job["api"]["rate_limits"] = [{"calls": r.calls, "seconds": r.seconds} for r in limits]
        path = tmp_path / "limits.yaml"
        path.write_text(json.dumps(job))
        # One request through the fresh server first: its first answer pays one-off start-up
        # costs, and a request stamped late there would shrink the window it opens.
        sim.reset_counters()
        report = harvest(load_job(path), RunOptions(), env)
        counters = sim.counters()
    assert report.exit_code == 0, report.summary()
    assert counters["rate_limit_violations"] == 0, counters
    assert counters["codes"].get("31", 0) == counters["codes"].get("32", 0) == 0, counters
    assert counters["max_in_flight"] > 1
    assert_complete(path, config)
    # 16 workers wait side by side: their summed waits exceed the time anyone was held back,
    # which cannot exceed the run.
    assert 0 < report.rate_limit_held_seconds <= report.elapsed_seconds
    assert report.rate_limit_wait_seconds > report.rate_limit_held_seconds


def test_gone_collections_cost_one_call_and_later_runs_skip_them(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    # 43 (deleted, not ours) and 46 (no such hash) are for good: one call each, one log line
    # each, the collection recorded as gone; the rest of the run and later runs skip it.
    simulator.reconfigure(deleted=frozenset({"g0n3"}), known=frozenset({HASHES[0], "g0n3"}))
    path = job_file(
        start="2026-03-01",
        end="2026-03-03",
        concurrency=1,
        collections=[{"hash": HASHES[0]}, {"hash": "g0n3"}, {"hash": "unkn0wn"}],
    )
    job = load_job(path)
    report = harvest(job, RunOptions(), env)
    assert report.exit_code == 1  # news: a collection is gone
    assert report.units_failed == 0 and report.units_gone == 6 and report.units_committed == 3
    counters = simulator.counters()
    assert counters["codes"] == {"20": 3, "43": 1, "46": 1}  # one refusal per collection
    reasons = {(f.collection_hash, f.reason.split(":")[0]) for f in report.failed}
    assert reasons == {("g0n3", "code 43"), ("unkn0wn", "code 46")}
    with StateStore(default_state_path(job.output)) as store:
        assert store.gone_collections() == {"g0n3", "unkn0wn"}
        assert store.counts()["done"] == 3
    last = json.loads((job.output.path / "_state" / "last-run.json").read_text())
    assert last["exit_code"] == 1 and len(last["failed"]) == 2

    simulator.reset_counters()
    again = harvest(job, RunOptions(), env)
    assert again.exit_code == 0 and again.outcome == "nothing to do"
    assert again.units_gone == 6 and simulator.counters()["requests"] == 0

    simulator.reconfigure(deleted=frozenset(), known=None)  # restored: --retry-gone fetches it
    retried = harvest(job, RunOptions(retry_gone=True), env)
    assert retried.exit_code == 0 and retried.units_committed == 6
    assert simulator.counters()["requests"] == 6
    assert_complete(path, sim_config)


def test_failed_units_are_retried_by_the_next_run(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    simulator.reconfigure(faults={"bad_payload": 1.0})
    path = job_file()
    first = harvest(load_job(path), RunOptions(), env)
    assert first.exit_code == 1 and first.units_failed == first.units_in_job
    simulator.reconfigure(faults={})
    simulator.reset_counters()
    report = harvest(load_job(path), RunOptions(), env)
    assert report.exit_code == 0
    assert simulator.counters()["requests"] == report.units_in_job
    assert_complete(path, sim_config)


def test_rejected_credentials_stop_the_run_at_once(
    job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    path = job_file(concurrency=2)
    report = harvest(
        load_job(path), RunOptions(), {**env, "FLIPSNACK_API_SECRET": "wrong-secret-value"}
    )
    assert report.exit_code == 3 and report.stopped_by == "CredentialsRejected"
    assert simulator.counters()["requests"] <= 2
    # Not a success in disguise: every unit of the job is failed with the reason, none is
    # "not attempted", and the state says so too.
    assert report.units_committed == 0 and report.units_not_attempted == 0
    assert report.units_failed == report.units_in_job == len(report.failed)
    assert {f.kind for f in report.failed} == {"stopped"}
    assert all("invalid signature" in f.reason for f in report.failed)
    with StateStore(default_state_path(load_job(path).output), readonly=True) as store:
        assert len(store.failed()) == report.units_in_job
    with pytest.raises(UnitsFailed) as caught:
        report.raise_on_failed_units()
    assert caught.value.exit_code == 3 and not caught.value.retryable


def test_without_page_stats_only_collection_rows(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    path = job_file(page_stats=False)
    harvest(load_job(path), RunOptions(), env)
    pages, collections = actual_rows(load_job(path).output)
    assert pages == [] and len(collections) == 14 + 16 + 3
    assert_complete(path, sim_config)


def test_collections_without_pages_or_traffic_still_get_a_row(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    simulator.reconfigure(pages={HASHES[0]: 0})
    sim_config = SimulatorConfig(**{**sim_config.__dict__, "pages": {HASHES[0]: 0}})
    path = job_file()
    harvest(load_job(path), RunOptions(), env)
    pages, collections = actual_rows(load_job(path).output)
    assert not [p for p in pages if p[0] == HASHES[0]]
    assert len([c for c in collections if c[0] == HASHES[0]]) == 14
    assert_complete(path, sim_config)


def test_discover_adds_every_collection_of_the_account(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    catalog = tuple(f"book{i:03d}" for i in range(57))  # more than one getList page of 50
    simulator.reconfigure(catalog=catalog)
    path = job_file(
        discover={"status": "public"},
        start="2026-03-01",
        end="2026-03-02",
        collections=[{"hash": "book007", "start": "2026-02-27", "end": "2026-02-28"}],
    )
    job = load_job(path)
    report = harvest(job, RunOptions(), env)
    assert report.exit_code == 0, report.summary()
    counters = simulator.counters()
    assert counters["requests"] == 2 + 57 * 2  # two list pages, then one call per unit
    pages, collections = actual_rows(job.output)
    listed = [c for c in collections if c[0] == "book007"]
    assert [c[1] for c in listed] == [date(2026, 2, 27), date(2026, 2, 28)]  # its own range
    assert {c[0] for c in collections} == set(catalog)
    assert len(collections) == 57 * 2
    from harvester.job.model import account_discovered, accounts_of

    assert_rows = expected_rows(
        account_discovered(job, accounts_of(job)[0], catalog)[0], sim_config
    )
    assert (pages, collections) == assert_rows


def test_discover_with_rejected_credentials_exits_3(
    job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    path = job_file(discover=True, collections=[])
    report = harvest(load_job(path), RunOptions(), {**env, "FLIPSNACK_API_KEY": "unknown-key-1"})
    assert report.exit_code == 3
    assert simulator.counters()["requests"] == 1
