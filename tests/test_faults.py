"""Faults, over real HTTP: every injected fault is survived exactly, and what cannot be survived
(a dead API, a broken payload) ends the way the contract says, with what was committed kept."""

from __future__ import annotations

import json
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from harvester.job.parse import load_job
from harvester.model import Unit
from harvester.plan.windows import iter_units
from harvester.run.options import RunOptions
from harvester.run.pipeline import harvest
from harvester.run.report import FailedEntry, RunReport
from harvester.simulator import FAULT_KINDS, SimulatorConfig, SimulatorThread, expected_stats
from harvester.simulator.answers import Answer
from harvester.state.store import StateStore, default_state_path
from tests.conftest import (
    API_KEY,
    API_SECRET,
    SIM_LIMITS,
    actual_rows,
    assert_complete,
    expected_rows,
    job_dict,
)

JobFile = Callable[..., Path]

# Every transient fault and the error kind the harvester must classify it as.
TRANSIENT_FAULTS = {
    "http500": "http",
    "http502": "http",
    "http503": "http",
    "http429": "http",
    "code22": "busy",
    "code38": "busy",
    "code31": "rate_limited",
    "code32": "rate_limited",
    "truncated": "bad_response",
    "not_json": "bad_response",
    "drop": "network",
    "slow": "timeout",
}
# Short windows, so that a spurious 31/32 pauses the key for 0.05/0.2 s, not a minute;
# at most ~140 calls/s, well inside the simulator's real limits (SIM_LIMITS).
FAST_WINDOWS = [{"calls": 10, "seconds": 0.05}, {"calls": 40, "seconds": 0.2}]
TIMEOUT = 0.5
SLOW = 2.0  # a "slow" answer comes well after the client's timeout
RUN_BUDGET = 20.0  # seconds; a seeded fault run takes 1-4 s


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """The conftest simulator, with a short Retry-After and a stall above the client's timeout."""
    return SimulatorConfig(
        seed=7,
        keys={API_KEY: API_SECRET},
        rate_limits=SIM_LIMITS,
        latency=(0.0, 0.003),
        retry_after=0.05,
        slow_seconds=SLOW,
    )


def fault_job(job_file: JobFile, simulator: SimulatorThread, **overrides: Any) -> Path:
    """A job that retries fast and often: 0.5 s timeout, 0.05 s backoff cap, 12 attempts."""
    api = {"base_url": simulator.base_url, "timeout_seconds": TIMEOUT, "rate_limits": FAST_WINDOWS}
    retry = {"attempts": 12, "max_backoff_seconds": 0.05}
    return job_file(**{"api": api, "concurrency": 8, "retry": retry, **overrides})


def run(path: Path, env: dict[str, str]) -> RunReport:
    """Harvest in-process, bounded in time."""
    started = time.monotonic()
    report = harvest(load_job(path), RunOptions(), env)
    assert time.monotonic() - started < RUN_BUDGET, report.summary()
    return report


def test_the_matrix_covers_every_transient_fault_kind() -> None:
    assert set(TRANSIENT_FAULTS) == FAULT_KINDS - {"bad_payload"}


@pytest.mark.parametrize("kind", sorted(TRANSIENT_FAULTS))
def test_each_fault_kind_is_survived_exactly(
    kind: str,
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(faults={kind: 0.3})
    path = fault_job(job_file, simulator)
    report = run(path, env)
    counters = simulator.counters()

    assert report.exit_code == 0 and report.outcome == "finished", report.summary()
    assert_complete(path, sim_config)
    units = len(list(iter_units(load_job(path))))
    assert report.units_committed == units and report.units_failed == 0
    injected = counters["faults"][kind]
    assert set(counters["faults"]) == {kind} and injected >= 5  # the fault really was exercised
    assert counters["rate_limit_violations"] == 0  # every 31/32 seen here was injected
    seen = report.errors_by_kind.get(TRANSIENT_FAULTS[kind], 0)
    if kind == "slow":  # a loaded machine may time out an ordinary answer too
        assert counters["requests"] == report.requests >= units + injected
        assert seen >= injected
    else:
        # Every faulty answer cost exactly one more request, and the harvester counted it.
        assert counters["requests"] == report.requests == units + injected
        # aiohttp resends a GET by itself when the connection drops: only a dropped resend
        # reaches the harvester as an error.
        assert seen == injected or (kind == "drop" and seen < injected)
    # Every failed attempt was retried, and nothing else was.
    assert report.retries == sum(report.errors_by_kind.values())
    if kind in ("code31", "code32", "http429"):
        assert report.rate_limit_answers == injected
        assert report.rate_limit_pauses == injected


def test_every_fault_mixed_still_ends_exact(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(faults=dict.fromkeys(TRANSIENT_FAULTS, 0.03))  # 36% of answers
    path = fault_job(job_file, simulator, end="2026-04-30")
    report = run(path, env)
    counters = simulator.counters()

    assert report.exit_code == 0, report.summary()
    assert_complete(path, sim_config)
    faulty = sum(counters["faults"].values())
    assert faulty >= 0.2 * counters["requests"], counters
    assert set(counters["faults"]) == set(TRANSIENT_FAULTS), counters["faults"]
    # aiohttp may resend a dropped GET itself: "network" need not reach the harvester.
    kinds = set(TRANSIENT_FAULTS.values())
    assert kinds - {"network"} <= set(report.errors_by_kind) <= kinds
    retried = faulty - counters["faults"]["drop"]  # a drop may be resent by aiohttp itself
    assert report.retries == sum(report.errors_by_kind.values()) >= retried
    assert report.rate_limit_pauses >= counters["faults"]["code31"] + counters["faults"]["code32"]


def _record_requests(simulator: SimulatorThread) -> list[tuple[float, Unit | None, int]]:
    """Log (arrival time, unit, HTTP status) of every request the simulator decides."""
    log: list[tuple[float, Unit | None, int]] = []
    decide = simulator.simulator._decide

    def recording(params: dict[str, str]) -> Answer:
        answer = decide(params)
        unit = None
        if "collectionHash" in params:
            unit = Unit(
                params["collectionHash"],
                date.fromisoformat(params["startDate"]),
                date.fromisoformat(params["endDate"]),
            )
        log.append((time.monotonic(), unit, answer.status))
        return answer

    simulator.simulator._decide = recording  # type: ignore[method-assign]
    return log


@pytest.mark.parametrize("breaker", [None, 2.0], ids=["default-breaker", "short-breaker"])
def test_retry_after_is_honoured(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
    breaker: float | None,
) -> None:
    retry_after = 0.3
    simulator.reconfigure(faults={"http429": 0.3}, retry_after=retry_after)
    requests = _record_requests(simulator)
    # A breaker of 2 s still allows a 0.3 s wait: the run sits it out rather than stopping.
    retry = {"attempts": 12, "max_backoff_seconds": 0.05}
    if breaker is not None:
        retry["circuit_breaker_seconds"] = breaker
    path = fault_job(job_file, simulator, start="2026-03-01", end="2026-03-05", retry=retry)
    report = run(path, env)
    counters = simulator.counters()

    assert report.exit_code == 0, report.summary()
    assert_complete(path, sim_config)
    too_many = counters["http_status"]["429"]
    assert too_many >= 3
    assert report.rate_limit_answers == report.rate_limit_pauses == too_many
    assert report.rate_limit_waits >= 1  # the pause held other workers back too
    # The server's own arrival times: no unit came back sooner than Retry-After told it.
    last_429: dict[Unit | None, float] = {}
    gaps = []
    for arrived, unit, status in requests:
        if unit in last_429:
            gaps.append(arrived - last_429.pop(unit))
        if status == 429:
            last_429[unit] = arrived
    assert len(gaps) == too_many
    assert min(gaps) >= retry_after, sorted(gaps)[:3]
    # ...and the header, not the 1 s used when there is none, set the pace.
    assert statistics.median(gaps) < 1.0, sorted(gaps)


def test_spurious_rate_limit_answers_pause_the_key_and_end_exact(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(faults={"code31": 0.15, "code32": 0.15})
    path = fault_job(job_file, simulator)
    report = run(path, env)
    counters = simulator.counters()

    assert report.exit_code == 0, report.summary()
    assert_complete(path, sim_config)
    assert counters["rate_limit_violations"] == 0
    spurious = counters["faults"]["code31"] + counters["faults"]["code32"]
    assert counters["codes"]["31"] + counters["codes"]["32"] == spurious > 0
    assert report.rate_limit_pauses == report.rate_limit_answers == spurious
    assert report.errors_by_kind == {"rate_limited": spurious}


# --- the harvester as a subprocess ---------------------------------------------------------


class Harvesting:
    """``python -m harvester run`` in the background, its stderr read line by line."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "harvester", "run", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, needle: str, timeout: float = 20.0) -> str:
        """The first stderr line containing ``needle``; fails on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                lines = "".join(self.lines)
                raise AssertionError(f"no {needle!r} within {timeout} s:\n{lines}") from None
            if line is None:
                raise AssertionError(f"exited before {needle!r}:\n{''.join(self.lines)}")
            if needle in line:
                return line

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        """Wait for the exit; return (exit code, stdout, stderr)."""
        self.process.wait(timeout)
        self._reader.join(timeout)
        assert self.process.stdout is not None
        return self.process.returncode, self.process.stdout.read(), "".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def harvesting() -> Iterator[Callable[..., Harvesting]]:
    """Start harvester subprocesses; kill any still running when the test ends."""
    started: list[Harvesting] = []

    def start(*args: str, env: dict[str, str]) -> Harvesting:
        started.append(Harvesting(*args, env=env))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def _day(text: str) -> date:
    return date.fromisoformat(text)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _summary_of(report: dict[str, Any]) -> str:
    """The human summary a report JSON stands for."""
    fields = {**report, "failed": [FailedEntry(**f) for f in report["failed"]]}
    return RunReport(**fields).summary()


def test_api_unreachable_for_a_while_then_back(
    tmp_path: Path,
    output_dir: Path,
    sim_config: SimulatorConfig,
    env: dict[str, str],
    harvesting: Callable[..., Harvesting],
) -> None:
    port = _free_port()  # nothing listens there yet: connection refused
    job = job_dict(
        f"http://127.0.0.1:{port}/v1/",
        output_dir,
        concurrency=2,
        retry={"attempts": 12, "max_backoff_seconds": 0.2},
    )
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))
    harvester = harvesting(str(path), env=env)
    line = harvester.wait_for_line("(network), attempt")
    assert "ClientConnectorError" in line and "retrying" in line
    with SimulatorThread(sim_config, port=port) as simulator:
        code, _, stderr = harvester.finish()
        counters = simulator.counters()
    assert code == 0, stderr
    assert_complete(path, sim_config)
    units = len(list(iter_units(load_job(path))))
    assert sorted(counters["successes"].values()) == [1] * units
    report = json.loads((output_dir / "_state" / "last-run.json").read_text())
    assert report["errors_by_kind"]["network"] >= 1 and report["units_failed"] == 0
    assert stderr.endswith(_summary_of(report) + "\n")


def test_circuit_breaker_stops_a_run_against_a_dead_api_and_keeps_what_was_committed(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
    harvesting: Callable[..., Harvesting],
) -> None:
    simulator.reconfigure(latency=(0.02, 0.04))  # a run of a few seconds: time to pull the plug
    path = job_file(
        concurrency=2,
        end="2026-03-31",
        retry={"attempts": 50, "max_backoff_seconds": 0.05, "circuit_breaker_seconds": 0.5},
    )
    harvester = harvesting(str(path), "-v", env=env)
    harvester.wait_for_line("committed 2026-03-0")  # a first partition is in Parquet
    simulator.reconfigure(faults={"http503": 1.0})
    code, _, stderr = harvester.finish()
    counters = simulator.counters()

    assert code == 1, stderr
    job = load_job(path)
    report = json.loads((job.output.path / "_state" / "last-run.json").read_text())
    assert report["stopped_by"] == "CircuitOpen" and report["exit_code"] == 1
    assert "the API looks down" in report["message"] and "last: http: HTTP 503" in report["message"]
    assert stderr.endswith(_summary_of(report) + "\n")
    assert "the API looks down" in stderr.splitlines()[-2]
    # Stopped early: most of the job was never answered...
    answered = {
        Unit(h, *map(_day, (s, e))) for h, s, e in (key.split("|") for key in counters["successes"])
    }
    units = list(iter_units(job))
    assert 0 < len(answered) < len(units) // 2
    assert report["units_committed"] == len(answered)
    # ...and every unit answered before the plug was pulled is committed, exactly.
    pages, collections = expected_rows(job, sim_config)
    keys = {(u.collection_hash, u.start, u.end) for u in answered}
    assert actual_rows(job.output) == (
        [r for r in pages if r[:3] in keys],
        [r for r in collections if r[:3] in keys],
    )
    with StateStore(default_state_path(job.output)) as store:
        assert store.counts().get("done") == len(answered)
    # Nothing was retried for long after the breaker's window.
    assert report["elapsed_seconds"] < 10


def test_a_retry_after_past_the_breaker_stops_the_run_and_keeps_what_was_committed(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
    harvesting: Callable[..., Harvesting],
) -> None:
    simulator.reconfigure(latency=(0.02, 0.04))  # a run of a few seconds: time to turn it on
    path = job_file(
        concurrency=2,
        end="2026-03-31",
        retry={"attempts": 6, "max_backoff_seconds": 0.05, "circuit_breaker_seconds": 5},
    )
    harvester = harvesting(str(path), "-v", env=env)
    harvester.wait_for_line("committed 2026-03-0")  # a first partition is in Parquet
    simulator.reconfigure(faults={"http429": 1.0}, retry_after=3600)
    turned_on = time.monotonic()
    code, _, stderr = harvester.finish()
    counters = simulator.counters()

    assert code == 1, stderr
    assert time.monotonic() - turned_on < 5, stderr  # not an hour, nor the breaker's 5 s
    job = load_job(path)
    report = json.loads((job.output.path / "_state" / "last-run.json").read_text())
    assert report["stopped_by"] == "CircuitOpen" and report["exit_code"] == 1
    assert "the API asked to wait 3600 s (HTTP 429, Retry-After)" in report["message"]
    assert stderr.endswith(_summary_of(report) + "\n")
    assert "asked to wait 3600 s" in stderr.splitlines()[-2]
    # What was answered before the 429s is committed, exactly, and marked done.
    answered = {
        Unit(h, *map(_day, (s, e))) for h, s, e in (key.split("|") for key in counters["successes"])
    }
    assert 0 < len(answered) < len(list(iter_units(job)))
    assert report["units_committed"] == len(answered)
    pages, collections = expected_rows(job, sim_config)
    keys = {(u.collection_hash, u.start, u.end) for u in answered}
    assert actual_rows(job.output) == (
        [r for r in pages if r[:3] in keys],
        [r for r in collections if r[:3] in keys],
    )
    with StateStore(default_state_path(job.output)) as store:
        assert store.counts().get("done") == len(answered)
    # Each worker asked once more at most: nobody retried into a wait the run cannot afford.
    assert counters["http_status"]["429"] <= 2


def test_circuit_breaker_opens_when_the_api_never_answers(
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(faults={"http503": 1.0})
    path = fault_job(
        job_file,
        simulator,
        retry={"attempts": 100, "max_backoff_seconds": 0.05, "circuit_breaker_seconds": 0.3},
    )
    report = run(path, env)
    assert report.exit_code == 1 and report.stopped_by == "CircuitOpen", report.summary()
    assert report.message.startswith("every call failed for ")
    assert report.message.endswith("(last: http: HTTP 503); the API looks down")
    assert report.units_committed == 0 and list(report.errors_by_kind) == ["http"]
    in_flight = report.requests - report.errors_by_kind["http"]  # abandoned at the stop
    assert 0 <= in_flight <= 8
    # Given up after the window, not after 100 attempts per unit.
    assert report.elapsed_seconds < 5 and report.requests < 200
    assert actual_rows(output_dir) == ([], [])


def test_invalid_payload_is_quarantined_and_fails_only_its_unit(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    env: dict[str, str],
    harvesting: Callable[..., Harvesting],
) -> None:
    simulator.reconfigure(faults={"bad_payload": 0.25})
    path = job_file()
    code, stdout, stderr = harvesting(str(path), env=env).finish()
    counters = simulator.counters()
    job = load_job(path)
    units = list(iter_units(job))

    assert code == 1, stderr
    broken = counters["faults"]["bad_payload"]
    assert broken >= 3
    assert counters["requests"] == len(units)  # a broken payload is not asked for again
    state = job.output.path / "_state"
    report = json.loads((state / "last-run.json").read_text())
    assert (state / "reports" / f"run-{report['run_id']}.json").read_text() == (
        state / "last-run.json"
    ).read_text()
    reason = "downloads: -1 is out of range 0..1000000000000000"
    assert report["units_failed"] == len(report["failed"]) == broken
    assert {(f["kind"], f["reason"], f["attempts"]) for f in report["failed"]} == {
        ("invalid_payload", reason, 1)
    }
    failed = {
        Unit(f["collection_hash"], _day(f["start"]), _day(f["end"])) for f in report["failed"]
    }
    # No row of a failed unit, every row of the others.
    keys = {(u.collection_hash, u.start, u.end) for u in failed}
    pages, collections = expected_rows(job, sim_config)
    assert actual_rows(job.output) == (
        [r for r in pages if r[:3] not in keys],
        [r for r in collections if r[:3] not in keys],
    )
    # The raw payloads, as answered, wait in the quarantine file.
    quarantine = state / "quarantine" / f"run-{report['run_id']}.jsonl"
    assert report["quarantined"] == broken and report["quarantine_file"] == str(quarantine)
    text = quarantine.read_text()
    assert API_KEY not in text and API_SECRET not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert len(entries) == broken
    for entry in entries:
        unit = Unit(entry["collection_hash"], _day(entry["start"]), _day(entry["end"]))
        assert unit in failed and entry["reason"] == reason
        raw = expected_stats(*unit, sim_config, page_stats=True)
        assert entry["payload"] == {**raw, "downloads": -1}
    assert stderr.endswith(_summary_of(report) + "\n")
    assert f"failed: {entries[0]['collection_hash']} " in stderr
    assert stdout == ""
