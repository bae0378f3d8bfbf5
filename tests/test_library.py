"""The library as orchestrators call it: from any thread, inside a running loop, a job from a
mapping, a narrowed window, a JSON-safe report, and the README's Airflow and Dagster recipes."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import types
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from harvester import (
    JobError,
    RunOptions,
    RunReport,
    UnitsFailed,
    harvest,
    harvest_async,
    load_job,
)
from harvester.errors import BudgetUnavailable, CircuitOpen, CredentialsRejected, LockedError
from harvester.plan.windows import iter_units
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import actual_rows, expected_rows, job_dict
from tests.redis_server import free_port

README = Path(__file__).parent.parent / "README.md"


@pytest.fixture
def job_data(simulator: SimulatorThread, output_dir: Path) -> dict[str, Any]:
    """A valid job as a mapping, against the simulator."""
    return job_dict(simulator.base_url, output_dir)


def test_harvest_works_from_a_worker_thread(
    job_data: dict[str, Any], sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    job = load_job(job_data)
    results: list[RunReport | BaseException] = []

    def work() -> None:
        try:
            results.append(harvest(job, RunOptions(), env))
        except BaseException as exc:  # the assertion below shows it
            results.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(120)
    report = results[0]
    assert isinstance(report, RunReport), report
    assert report.exit_code == 0
    assert actual_rows(job.output) == expected_rows(job, sim_config)


async def test_harvest_async_inside_a_running_loop(
    job_data: dict[str, Any], sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    job = load_job(job_data)
    ticks = 0

    async def tick() -> None:  # the caller's loop keeps running during the harvest
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    report = await harvest_async(job, RunOptions(), env)
    ticker.cancel()
    assert report.exit_code == 0 and ticks > 1
    assert actual_rows(job.output) == expected_rows(job, sim_config)
    # The blocking call from inside a loop runs on a thread of its own instead of failing.
    again = harvest(job, RunOptions(), env)
    assert again.outcome == "nothing to do"


def test_a_job_from_a_mapping_is_validated_like_a_file(job_data: dict[str, Any]) -> None:
    job_data["concurency"] = 4
    job_data["granularity"] = "dya"
    with pytest.raises(JobError) as caught:
        load_job(job_data, name="dag:flipsnack")
    lines = str(caught.value).splitlines()
    assert lines == [
        "dag:flipsnack: concurency: unknown key 'concurency'; did you mean 'concurrency'?",
        "dag:flipsnack: granularity: expected one of day, week, month, range, found string"
        " 'dya'; did you mean 'day'?",
    ]
    assert not caught.value.retryable
    with pytest.raises(JobError, match="<mapping>: collections: required"):
        load_job({"start": "2026-03-01"})


@pytest.mark.parametrize("granularity", ["day", "week", "month"])
def test_a_narrowed_window_selects_whole_calendar_windows(
    granularity: str,
    job_data: dict[str, Any],
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    job_data.update(granularity=granularity, start="2026-02-20", end="2026-03-20")
    job = load_job(job_data)
    start, end = date(2026, 3, 4), date(2026, 3, 5)  # a Wednesday and a Thursday
    report = harvest(job, RunOptions(start=start, end=end), env)
    assert report.exit_code == 0
    # The units whose calendar window meets the interval, whole (a week is not cut to 2 days).
    wanted = [u for u in iter_units(job) if _meets(granularity, u.start, u.end, start, end)]
    assert simulator.counters()["requests"] == len(wanted) == report.units_committed
    assert report.units_outside == report.units_in_job - len(wanted)
    pages, collections = expected_rows(job, sim_config)
    keys = {(u.collection_hash, u.start, u.end) for u in wanted}
    assert actual_rows(job.output) == (
        [r for r in pages if r[:3] in keys],
        [r for r in collections if r[:3] in keys],
    )


def _meets(granularity: str, first: date, last: date, start: date, end: date) -> bool:
    """Whether the calendar period holding the window first..last meets start..end."""
    from harvester.model import period_end, period_of

    period = period_of(granularity, first)
    return period <= end and (period_end(granularity, period) or last) >= start


def test_the_report_is_json_safe_and_can_fail_the_task(
    job_data: dict[str, Any], simulator: SimulatorThread, env: dict[str, str]
) -> None:
    simulator.reconfigure(faults={"bad_payload": 0.5}, seed=11)
    report = harvest(load_job(job_data), RunOptions(), env)
    assert report.units_failed > 0
    data = json.loads(json.dumps(report.to_dict()))
    assert data["units_failed"] == report.units_failed and data["failed"]
    with pytest.raises(UnitsFailed) as caught:
        report.raise_on_failed_units()
    assert caught.value.retryable and caught.value.failed == len(report.failed)
    assert caught.value.exit_code == 1
    simulator.reconfigure(faults={})
    retried = harvest(load_job(job_data), RunOptions(), env)
    assert retried.raise_on_failed_units() is retried  # the next run fetched exactly those


def test_errors_say_whether_a_retry_can_help() -> None:
    assert CircuitOpen("down").retryable and LockedError("busy").retryable
    assert BudgetUnavailable("redis down").retryable
    assert not CredentialsRejected(41).retryable and not JobError([]).retryable


def test_rejected_credentials_fail_the_task_and_say_no_retry_helps(
    job_data: dict[str, Any], simulator: SimulatorThread, env: dict[str, str]
) -> None:
    report = harvest(load_job(job_data), RunOptions(), {**env, "FLIPSNACK_API_SECRET": "wrong"})
    assert report.exit_code == 3 and report.units_not_attempted == 0
    assert report.units_failed == report.units_in_job > 0
    with pytest.raises(UnitsFailed) as caught:
        report.raise_on_failed_units()
    assert caught.value.exit_code == 3 and not caught.value.retryable
    assert "rejected the credentials" in str(caught.value)


def test_an_unreachable_budget_fails_the_task_before_any_call(
    job_data: dict[str, Any], simulator: SimulatorThread, env: dict[str, str]
) -> None:
    job_data["api"]["rate_budget"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    report = harvest(load_job(job_data), RunOptions(), env)
    assert simulator.counters()["requests"] == 0
    assert report.exit_code == 2 and report.stopped_by == "BudgetUnavailable"
    assert report.units_failed == report.units_in_job > 0 and report.units_not_attempted == 0
    assert all("cannot be reached" in f.reason for f in report.failed)
    with pytest.raises(UnitsFailed) as caught:
        report.raise_on_failed_units()
    assert caught.value.exit_code == 2 and caught.value.retryable  # Redis may come back


@pytest.mark.parametrize("code", [1, 2, 3, 130, 143])
def test_raise_on_failed_units_raises_for_every_exit_code_but_0(code: int) -> None:
    report = RunReport("r1", "job.yaml", "out", "state", "2026-03-01", exit_code=code)
    with pytest.raises(UnitsFailed) as caught:
        report.raise_on_failed_units()
    assert caught.value.exit_code == code and f"exited {code}" in str(caught.value)
    ok = RunReport("r2", "job.yaml", "out", "state", "2026-03-01", exit_code=0)
    assert ok.raise_on_failed_units() is ok


# --- the README's recipes, run against stand-ins for the orchestrators -----------------------


def recipe(title: str) -> str:
    """The Python block under a README heading."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(title) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, title
    return match.group(1)


@pytest.fixture
def orchestrators(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Minimal stand-ins for the Airflow and Dagster names the recipes import."""
    seen: dict[str, Any] = {}

    def task(**settings: Any) -> Callable[[Any], Any]:
        seen["task"] = settings
        return lambda fn: fn

    class DailyPartitionsDefinition:
        def __init__(self, start_date: str) -> None:
            seen["partitions_start"] = start_date

    def asset(**settings: Any) -> Callable[[Any], Any]:
        seen["asset"] = settings
        return lambda fn: fn

    class MetadataValue:
        @staticmethod
        def json(value: Any) -> Any:
            return {"json": value}

    class AirflowFailException(Exception):
        """Airflow's: fail the task, no retry."""

    class Failure(Exception):
        def __init__(self, description: str, metadata: Any, allow_retries: bool) -> None:
            super().__init__(description)
            self.allow_retries = allow_retries

    airflow = types.ModuleType("airflow")
    decorators = types.ModuleType("airflow.decorators")
    decorators.task = task  # type: ignore[attr-defined]
    exceptions = types.ModuleType("airflow.exceptions")
    exceptions.AirflowFailException = AirflowFailException  # type: ignore[attr-defined]
    dagster = types.ModuleType("dagster")
    dagster.asset = asset  # type: ignore[attr-defined]
    dagster.DailyPartitionsDefinition = DailyPartitionsDefinition  # type: ignore[attr-defined]
    dagster.MetadataValue = MetadataValue  # type: ignore[attr-defined]
    dagster.Failure = Failure  # type: ignore[attr-defined]
    dagster.AssetExecutionContext = object  # type: ignore[attr-defined]
    seen["AirflowFailException"], seen["Failure"] = AirflowFailException, Failure
    for name, module in {
        "airflow": airflow,
        "airflow.decorators": decorators,
        "airflow.exceptions": exceptions,
        "dagster": dagster,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    yield seen


def _job_file(tmp_path: Path, job_data: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(job_data))
    return path


def test_the_airflow_recipe(
    orchestrators: dict[str, Any],
    job_data: dict[str, Any],
    simulator: SimulatorThread,
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = _job_file(tmp_path, job_data)
    code = recipe("### Airflow").replace("/srv/harvester/jobs/nightly.yaml", str(path))
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md (Airflow)", "exec"), namespace)
    task = namespace["harvest_flipsnack"]
    # Airflow hands the task its data interval: one day.
    result = task(
        data_interval_start=datetime(2026, 3, 3, tzinfo=UTC),
        data_interval_end=datetime(2026, 3, 4, tzinfo=UTC),
    )
    assert json.loads(json.dumps(result))["units_committed"] == 2  # two flipbooks that day
    assert orchestrators["task"]["retries"] >= 1
    assert simulator.counters()["requests"] == 2
    # Rejected credentials: the task fails, and tells Airflow no retry can help.
    monkeypatch.setenv("FLIPSNACK_API_SECRET", "wrong")
    with pytest.raises(orchestrators["AirflowFailException"], match="rejected the credentials"):
        task(
            data_interval_start=datetime(2026, 3, 4, tzinfo=UTC),
            data_interval_end=datetime(2026, 3, 5, tzinfo=UTC),
        )
    # A failure a retry can help with: UnitsFailed itself, for Airflow's retries.
    monkeypatch.setenv("FLIPSNACK_API_SECRET", env["FLIPSNACK_API_SECRET"])
    simulator.reconfigure(faults={"bad_payload": 1.0})
    with pytest.raises(UnitsFailed):
        task(
            data_interval_start=datetime(2026, 3, 5, tzinfo=UTC),
            data_interval_end=datetime(2026, 3, 6, tzinfo=UTC),
        )


def test_the_dagster_recipe(
    orchestrators: dict[str, Any],
    job_data: dict[str, Any],
    simulator: SimulatorThread,
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = _job_file(tmp_path, job_data)
    code = recipe("### Dagster").replace("/srv/harvester/jobs/nightly.yaml", str(path))
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md (Dagster)", "exec"), namespace)
    metadata: dict[str, Any] = {}
    context = types.SimpleNamespace(
        partition_key="2026-03-10", add_output_metadata=metadata.update, log=None
    )
    namespace["flipsnack_stats"](context)
    assert metadata["units_committed"] == 2  # two flipbooks have 2026-03-10 in their range
    assert metadata["report"]["json"]["exit_code"] == 0
    assert "partitions_def" in orchestrators["asset"]
    monkeypatch.setenv("FLIPSNACK_API_SECRET", "wrong")
    context.partition_key = "2026-03-11"
    with pytest.raises(orchestrators["Failure"]) as caught:
        namespace["flipsnack_stats"](context)
    assert caught.value.allow_retries is False


def test_the_dagster_recipe_with_real_dagster(
    job_data: dict[str, Any],
    simulator: SimulatorThread,
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dagster = pytest.importorskip("dagster")  # the `orchestrators` extra; make install has it
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    path = _job_file(tmp_path, job_data)
    code = recipe("### Dagster").replace("/srv/harvester/jobs/nightly.yaml", str(path))
    namespace: dict[str, Any] = {}
    # As a user's module runs it: without this test module's `from __future__ import
    # annotations`, which would turn the context's annotation into a string Dagster refuses.
    exec(compile(code, "README.md (Dagster)", "exec", dont_inherit=True), namespace)
    asset = namespace["flipsnack_stats"]
    instance = dagster.DagsterInstance.ephemeral()
    good = dagster.materialize([asset], partition_key="2026-03-10", instance=instance)
    assert good.success
    [materialized] = good.asset_materializations_for_node("flipsnack_stats")
    assert materialized.metadata["units_committed"].value == 2
    assert simulator.counters()["requests"] == 2
    # Rejected credentials: the asset fails (not a success with nothing written).
    monkeypatch.setenv("FLIPSNACK_API_SECRET", "wrong")
    bad = dagster.materialize(
        [asset], partition_key="2026-03-11", instance=instance, raise_on_error=False
    )
    assert not bad.success
    [failure] = [e for e in bad.all_events if e.is_step_failure]
    assert "rejected the credentials" in str(failure.step_failure_data.error)
    assert not bad.asset_materializations_for_node("flipsnack_stats")
