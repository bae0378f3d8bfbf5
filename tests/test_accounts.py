"""Several accounts in one job: each with its own key, budget and pause, stopping alone, rows
tagged with the account's name; the scheduler; older outputs gaining the account column."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from harvester.errors import JobError
from harvester.job.parse import load_job
from harvester.lake.dataset import read_dataset
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from harvester.model import RateLimit, Unit
from harvester.plan.schedule import Scheduler
from harvester.plan.windows import iter_units
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import END, START, actual_rows, expected_rows, run_cli
from tests.redis_server import free_port

KEYS = {
    "north": ("KEY-north-1f2e", "SECRET-north-9a8b"),
    "south": ("KEY-south-3c4d", "SECRET-south-7e6f"),
    "west": ("KEY-west-5a6b", "SECRET-west-1c2d"),
}
HASHES = {"north": ["n0rth1", "n0rth2"], "south": ["s0uth1"], "west": ["w3st01", "w3st02"]}
LIMITS = (RateLimit(8, 0.5), RateLimit(40, 10.0))  # per key, at the simulator and in the job


CATALOG = ("c4t001", "c4t002")  # what collection.getList lists, whichever the key


@pytest.fixture
def accounts_sim() -> Iterator[SimulatorThread]:
    """One simulator, three keys: three accounts, each with its own rate windows."""
    config = SimulatorConfig(
        seed=5,
        keys=dict(KEYS.values()),
        rate_limits=LIMITS,
        latency=(0.0, 0.01),
        catalog=CATALOG,
    )
    with SimulatorThread(config) as sim:
        yield sim


def _env(**wrong: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    for name, (key, secret) in KEYS.items():
        env[f"{name.upper()}_KEY"] = key
        env[f"{name.upper()}_SECRET"] = wrong.get(name, secret)
    return env


def _accounts_job(tmp_path: Path, base_url: str, **per_account: dict[str, Any]) -> Path:
    accounts = []
    for name, hashes in HASHES.items():
        account: dict[str, Any] = {
            "name": name,
            "key_env": f"{name.upper()}_KEY",
            "secret_env": f"{name.upper()}_SECRET",
            "collections": hashes,
        }
        account.update(per_account.get(name, {}))
        accounts.append(account)
    job = {
        "api": {
            "base_url": base_url,
            "timeout_seconds": 5,
            "rate_limits": [{"calls": r.calls, "seconds": r.seconds} for r in LIMITS],
        },
        "concurrency": 6,
        "retry": {"attempts": 3, "max_backoff_seconds": 0.05, "circuit_breaker_seconds": 2},
        "granularity": "day",
        "output": str(tmp_path / "output"),
        "start": START.isoformat(),
        "end": END.isoformat(),
        "accounts": accounts,
    }
    path = tmp_path / "accounts.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _report(job_path: Path) -> dict[str, Any]:
    output = Path(yaml.safe_load(job_path.read_text())["output"])
    report: dict[str, Any] = json.loads((output / "_state" / "last-run.json").read_text())
    return report


def _tags(output: Path) -> dict[str, set[str]]:
    """Collection hash → the account names its rows carry, over both datasets."""
    tags: dict[str, set[str]] = {}
    for name in (PAGE_STATS, COLLECTION_STATS):
        for row in read_dataset(output, name).select(["collection_hash", "account"]).to_pylist():
            tags.setdefault(row["collection_hash"], set()).add(row["account"])
    return tags


def _owner(collection_hash: str) -> str:
    return next(name for name, hashes in HASHES.items() if collection_hash in hashes)


# --- the job file --------------------------------------------------------------------------------


def test_a_collection_under_two_accounts_is_a_job_file_error(tmp_path: Path) -> None:
    path = _accounts_job(tmp_path, "http://127.0.0.1:1/", west={"collections": ["n0rth1"]})
    with pytest.raises(JobError) as caught:
        load_job(path)
    assert "accounts[2].collections[0].hash" in str(caught.value)
    assert "already listed under account 'north'" in str(caught.value)


def test_the_accounts_example_is_valid_and_says_what_it_holds() -> None:
    from harvester.ops.validate import describe

    line = describe(Path(__file__).parent.parent / "configs" / "accounts.yaml")
    assert (
        "3 accounts (north, south, west), keys from $NORTH_KEY, $SOUTH_KEY and $WEST_KEY;" in line
    )
    assert "listing their collections at run time: south" in line


def test_the_one_account_format_is_the_default_account(tmp_path: Path) -> None:
    from harvester.job.model import accounts_of

    path = tmp_path / "one.yaml"
    path.write_text(
        yaml.safe_dump({"start": "2026-03-01", "end": "2026-03-02", "collections": ["abc123"]})
    )
    (account,) = accounts_of(load_job(path))
    assert account.name == "default" and [c.hash for c in account.collections] == ["abc123"]


# --- runs against one simulator with three keys --------------------------------------------------


@pytest.mark.slow
def test_three_accounts_each_within_its_key_limits_rows_tagged_exact(
    tmp_path: Path, accounts_sim: SimulatorThread
) -> None:
    path = _accounts_job(tmp_path, accounts_sim.base_url)
    result = run_cli("run", str(path), "-q", env=_env())
    assert result.returncode == 0, result.stderr
    counters = accounts_sim.counters()
    assert counters["codes"].get("31", 0) + counters["codes"].get("32", 0) == 0
    job = load_job(path)
    assert actual_rows(job.output) == expected_rows(job, accounts_sim.simulator.config)
    assert _tags(job.output) == {h: {_owner(h)} for hs in HASHES.values() for h in hs}
    report = _report(path)
    units = {name: len(hs) * 14 for name, hs in HASHES.items()}
    assert {n: f["units_fetched"] for n, f in report["by_account"].items()} == units
    assert all(f["rate_limit_answers"] == 0 for f in report["by_account"].values())
    # Three keys at 8/0.5 s each: together faster than one key's budget allows.
    one_key = (sum(units.values()) - LIMITS[0].calls) / (LIMITS[0].calls / LIMITS[0].seconds)
    assert report["elapsed_seconds"] < one_key
    # The plan, the status and the summary, by account.
    plan = run_cli("run", str(path), "--dry-run", env=_env())
    assert "  north: 28 units in the job, 28 done, 0 to fetch now" in plan.stdout, plan.stdout
    status = run_cli("status", str(path), env=_env())
    assert "account south: 14 units done, 0 failed, 0 staged" in status.stdout, status.stdout
    summary = run_cli("summary", str(job.output), "--account", "west", env=_env())
    assert summary.returncode == 0, summary.stderr
    assert "w3st01" in summary.stdout and "n0rth1" not in summary.stdout


@pytest.mark.slow
def test_a_rejected_account_stops_alone_and_the_run_exits_3_naming_it(
    tmp_path: Path, accounts_sim: SimulatorThread
) -> None:
    path = _accounts_job(tmp_path, accounts_sim.base_url)
    result = run_cli("run", str(path), "-q", env=_env(south="SECRET-wrong"))
    assert result.returncode == 3, result.stderr
    assert "account south" in result.stderr
    report = _report(path)
    assert report["accounts_rejected"] == ["south"]
    assert report["by_account"]["south"]["stopped_by"] == "CredentialsRejected"
    assert report["by_account"]["south"]["units_failed"] == 14
    failed = {entry["collection_hash"] for entry in report["failed"]}
    assert failed == set(HASHES["south"])
    assert all("account south" in e["reason"] for e in report["failed"])
    job = load_job(path)
    pages, collections = expected_rows(job, accounts_sim.simulator.config)
    kept = [r for r in pages if _owner(r[0]) != "south"]
    others = [r for r in collections if _owner(r[0]) != "south"]
    assert actual_rows(job.output) == (kept, others)
    assert set(_tags(job.output)) == set(HASHES["north"] + HASHES["west"])


@pytest.mark.slow
def test_an_account_whose_api_is_down_never_holds_the_others_back(
    tmp_path: Path, accounts_sim: SimulatorThread
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1/"
    path = _accounts_job(tmp_path, accounts_sim.base_url, west={"base_url": dead})
    result = run_cli("run", str(path), "-q", env=_env())
    assert result.returncode == 1, result.stderr
    report = _report(path)
    west = report["by_account"]["west"]
    assert west["stopped_by"] in (None, "CircuitOpen")  # failed fast, or the breaker opened
    assert west["units_fetched"] == 0
    assert west["units_failed"] + west["units_not_attempted"] == len(HASHES["west"]) * 14
    for name in ("north", "south"):
        assert report["by_account"][name]["units_fetched"] == len(HASHES[name]) * 14
        assert report["by_account"][name]["stopped_by"] is None
    # The others' 42 units at 8/0.5 s on two keys take a few seconds; a run waiting on the dead
    # account's retries and breaker would take its every unit's attempts on top.
    assert report["elapsed_seconds"] < 15
    job = load_job(path)
    assert set(_tags(job.output)) == set(HASHES["north"] + HASHES["south"])
    rerun = _accounts_job(tmp_path, accounts_sim.base_url)
    assert run_cli("run", str(rerun), "-q", env=_env()).returncode == 0  # west's units resume
    assert actual_rows(job.output) == expected_rows(job, accounts_sim.simulator.config)


@pytest.mark.slow
def test_an_account_discovers_its_collections_and_listed_ones_keep_their_account(
    tmp_path: Path, accounts_sim: SimulatorThread
) -> None:
    path = _accounts_job(
        tmp_path,
        accounts_sim.base_url,
        north={"collections": [*HASHES["north"], CATALOG[0]]},
        south={"discover": True},
    )
    result = run_cli("run", str(path), "-q", env=_env())
    assert result.returncode == 0, result.stderr
    tags = _tags(load_job(path).output)
    assert tags[CATALOG[0]] == {"north"}  # listed by north: discovery leaves it there
    assert tags[CATALOG[1]] == {"south"}
    assert tags["s0uth1"] == {"south"}
    report = _report(path)
    assert report["by_account"]["south"]["units_fetched"] == 2 * 14
    assert report["by_account"]["north"]["units_fetched"] == 3 * 14


# --- the scheduler -------------------------------------------------------------------------------


class FakeLane:
    def __init__(self, name: str, admits_at: float) -> None:
        self.name, self.at = name, admits_at

    def soonest(self) -> float:
        return self.at


def _units(name: str, n: int) -> Iterator[Unit]:
    return iter([Unit(f"{name}{i}", START, START) for i in range(n)])


def test_a_free_worker_takes_the_account_admitted_soonest_never_a_paused_one() -> None:
    paused, busy, free = FakeLane("p", math.inf), FakeLane("b", 5.0), FakeLane("f", 1.0)
    scheduler = Scheduler(
        [(paused, _units("p", 3)), (busy, _units("b", 3)), (free, _units("f", 2))],
        FakeLane.soonest,
    )
    order = [lane.name for lane, _ in scheduler]
    assert order == ["f", "f", "b", "b", "b", "p", "p", "p"]


def test_accounts_equally_ready_take_turns() -> None:
    lanes = [FakeLane(n, 0.0) for n in "abc"]
    scheduler = Scheduler([(lane, _units(lane.name, 2)) for lane in lanes], FakeLane.soonest)
    assert [lane.name for lane, _ in scheduler] == ["a", "b", "c", "a", "b", "c"]


# --- outputs written before the account column ---------------------------------------------------


def test_an_older_output_gains_the_account_column_on_the_next_run(
    tmp_path: Path, job_file: Any, env: dict[str, str], simulator: SimulatorThread
) -> None:
    path = job_file()
    assert run_cli("run", str(path), "-q", env=env).returncode == 0
    output = load_job(path).output.path
    for part in output.glob("*/period_start=*/part-0.parquet"):  # as an older version wrote it
        pq.write_table(pq.read_table(part, partitioning=None).drop(["account"]), part)
    record = output / "_harvester" / "output.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "schema_version": 1}))
    first = sorted(output.glob(f"{PAGE_STATS}/period_start=*/part-0.parquet"))[0]
    assert "account" not in pq.read_schema(first).names
    assert run_cli("run", str(path), "-q", env=env).returncode == 0  # nothing to fetch
    for part in output.glob("*/period_start=*/part-0.parquet"):
        assert pq.read_schema(part).field("account").type == pa.string()
    # Recorded once: later runs trust the record and read no footer to find out again.
    assert json.loads(record.read_text())["schema_version"] == 2
    # What the README's readers see: DuckDB over the files, pyarrow from the first file.
    import duckdb

    accounts = duckdb.sql(
        f"SELECT DISTINCT account FROM read_parquet('{output}/{PAGE_STATS}/*/*.parquet')"
    ).fetchall()
    assert accounts == [("default",)]
    assert pq.read_table(first).column("account").to_pylist()[0] == "default"
    job = load_job(path)
    units = list(iter_units(job))
    assert len(read_dataset(output, COLLECTION_STATS)) == len(units)


def test_metrics_break_the_run_down_by_account(
    tmp_path: Path, accounts_sim: SimulatorThread
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    path = _accounts_job(tmp_path, accounts_sim.base_url)
    prom = tmp_path / "harvester.prom"
    result = run_cli(
        "run", str(path), "-q", "--metrics-file", str(prom), env=_env(south="SECRET-wrong")
    )
    assert result.returncode == 3, result.stderr
    report = _report(path)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }
    ident = (("harvest_job", str(path)), ("output", report["output"]))

    def value(name: str, account: str, **extra: str) -> float:
        labels = tuple(sorted({**dict(ident), "account": account, **extra}.items()))
        return samples[("harvester_" + name, labels)]

    assert value("last_run_exit_code", "all") == 3  # the run-wide series: account="all"
    for name, figures in report["by_account"].items():
        assert value("account_last_run_units", name, outcome="fetched") == figures["units_fetched"]
        assert value("account_last_run_units", name, outcome="failed") == figures["units_failed"]
        assert value("account_last_run_requests", name) == figures["requests"]
        assert value("account_last_run_stopped", name) == (name == "south")
    assert value("account_last_run_answers", "south", code="44") >= 1
    assert not any(h in prom.read_text() for hs in HASHES.values() for h in hs)
