"""Prometheus metrics: the textfile read back with prometheus_client's parser, and a push."""

from __future__ import annotations

import base64
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harvester.errors import UsageError
from harvester.job.parse import load_job
from harvester.ops.metrics import METRICS, check_target, export, newest_period_end
from harvester.run.options import RunOptions
from harvester.run.pipeline import harvest
from harvester.run.report import RunReport
from harvester.simulator import SimulatorThread
from tests.conftest import HASHES, run_cli

JobFile = Callable[..., Path]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
IDENTITY = ("account", "harvest_job", "output")


def _samples(text: str) -> Samples:
    """Every sample: (name, its labels other than the identifying ones) → value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in IDENTITY))
            found[(sample.name, labels)] = sample.value
    return found


def _identities(text: str) -> set[tuple[tuple[str, str], ...]]:
    """The distinct identifying label sets in ``text``."""
    return {
        tuple(sorted((k, v) for k, v in s.labels.items() if k in IDENTITY))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _run(job_path: Path, env: dict[str, str], metrics_file: Path) -> tuple[RunReport, Samples]:
    """Harvest in-process, export, and read the file back."""
    report = harvest(load_job(job_path), RunOptions(), env)
    export(report, load_job(job_path).output, metrics_file=metrics_file)
    return report, _samples(metrics_file.read_text())


def test_the_textfile_holds_the_reports_figures(
    job_file: JobFile, simulator: SimulatorThread, tmp_path: Path, env: dict[str, str]
) -> None:
    simulator.reconfigure(faults={"http503": 0.2, "code22": 0.1})
    path = job_file()
    prom = tmp_path / "harvester.prom"
    report, samples = _run(path, env, prom)
    assert report.exit_code == 0, report.summary()
    h = "harvester_"
    assert samples[(h + "last_run_exit_code", ())] == 0
    assert samples[(h + "last_run_timestamp_seconds", ())] == _ts(report.finished_at)
    assert samples[(h + "last_success_timestamp_seconds", ())] == _ts(report.finished_at)
    assert samples[(h + "last_run_duration_seconds", ())] == report.elapsed_seconds
    for outcome, value in [
        ("committed", report.units_committed),
        ("failed", 0),
        ("already_done", 0),
        ("not_attempted", 0),
    ]:
        assert samples[(h + "last_run_units", (("outcome", outcome),))] == value
    assert samples[(h + "last_run_requests", ())] == report.requests
    assert samples[(h + "last_run_retries", ())] == report.retries > 0
    wait = samples[(h + "last_run_rate_limit_wait_seconds", ())]
    assert wait == report.rate_limit_wait_seconds
    for dataset, rows in [
        ("page_stats", report.page_rows_written),
        ("collection_stats", report.collection_rows_written),
    ]:
        assert samples[(h + "last_run_rows_written", (("dataset", dataset),))] == rows
    # Answers by code: one 20 per unit, and every injected fault under its own code.
    faults = simulator.counters()["faults"]
    answers = {
        labels[0][1]: value
        for (name, labels), value in samples.items()
        if name == h + "last_run_answers"
    }
    assert answers == report.answers_by_code
    injected = {"http_503": faults.get("http503", 0), "22": faults.get("code22", 0)}
    assert answers == {"20": report.units_committed} | {k: n for k, n in injected.items() if n}
    assert sum(answers.values()) == report.requests
    newest = datetime(2026, 3, 21, tzinfo=UTC).timestamp()  # the job's last day is 03-20
    assert samples[(h + "newest_period_end_timestamp_seconds", ())] == newest
    # Every metric is there, each with one identity and no collection hash anywhere.
    text = prom.read_text()
    assert {f.name for f in text_string_to_metric_families(text)} == {h + m for m, _, _ in METRICS}
    assert _identities(text) == {
        (("account", "default"), ("harvest_job", str(path)), ("output", report.output))
    }
    assert not any(hash_ in text for hash_ in HASHES)
    assert sorted(p.name for p in tmp_path.glob("harvester.prom*")) == ["harvester.prom"]


def test_last_success_survives_a_failing_run(
    job_file: JobFile, simulator: SimulatorThread, tmp_path: Path, env: dict[str, str]
) -> None:
    prom = tmp_path / "harvester.prom"
    first, after_first = _run(job_file(), env, prom)
    assert first.exit_code == 0
    time.sleep(1.1)  # report times have whole seconds: let the second run finish later
    simulator.reconfigure(deleted=frozenset({"g0ne"}))
    failing = job_file(collections=[{"hash": HASHES[0]}, {"hash": "g0ne"}])
    second, after_second = _run(failing, env, prom)
    assert second.exit_code == 1 and second.units_gone == 14
    last_success = ("harvester_last_success_timestamp_seconds", ())
    last_run = ("harvester_last_run_timestamp_seconds", ())
    assert after_first[last_success] == after_first[last_run] == _ts(first.finished_at)
    assert after_second[last_success] == _ts(first.finished_at)
    assert after_second[last_run] == _ts(second.finished_at) > _ts(first.finished_at)
    assert after_second[("harvester_last_run_exit_code", ())] == 1
    assert after_second[("harvester_last_run_units", (("outcome", "gone"),))] == 14
    # One refusal per collection, plus at most the calls already in flight when it came.
    assert 1 <= after_second[("harvester_last_run_answers", (("code", "43"),))] <= 4


@pytest.mark.parametrize(
    ("fault", "answer"),
    [
        ("http502", "http_502"),
        ("code38", "38"),
        ("code31", "31"),
        ("truncated", "bad_response"),
        ("not_json", "bad_response"),
        ("bad_payload", "invalid_payload"),
    ],
)
def test_answers_are_counted_by_code(
    fault: str,
    answer: str,
    job_file: JobFile,
    simulator: SimulatorThread,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(faults={fault: 0.3})
    report = harvest(load_job(job_file()), RunOptions(), env)
    injected = simulator.counters()["faults"][fault]
    assert injected > 0
    answers = dict(report.answers_by_code)
    assert answers.pop(answer) == injected
    assert answers == {"20": report.units_committed}
    assert injected + report.units_committed == report.requests


def test_rejected_credentials_are_counted(
    job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    report = harvest(load_job(job_file()), RunOptions(), {**env, "FLIPSNACK_API_SECRET": "no"})
    assert report.exit_code == 3
    # The first 44 stops the run: requests still in flight are abandoned, never answered.
    assert list(report.answers_by_code) == ["44"]
    assert 1 <= report.answers_by_code["44"] <= report.requests


def test_no_success_yet_is_zero_and_no_data_has_no_freshness(tmp_path: Path) -> None:
    report = RunReport("r1", "job.yaml", str(tmp_path), str(tmp_path / "_state" / "s.sqlite"), "")
    report.finished_at, report.exit_code = "2026-03-01T03:15:09+00:00", 3
    prom = tmp_path / "m.prom"
    export(report, tmp_path, metrics_file=prom)
    samples = _samples(prom.read_text())
    assert samples[("harvester_last_success_timestamp_seconds", ())] == 0
    assert samples[("harvester_last_run_exit_code", ())] == 3
    assert not any(name.startswith("harvester_newest") for name, _ in samples)
    assert newest_period_end(tmp_path) is None


# --- the Pushgateway ---------------------------------------------------------------------------


@pytest.fixture
def pushgateway() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny HTTP endpoint on a free loopback port that records every request."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length).decode()
            received.append({"method": "PUT", "path": self.path, "body": body})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # keep the test output quiet
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()


def test_push_to_a_gateway(
    job_file: JobFile,
    simulator: SimulatorThread,
    env: dict[str, str],
    pushgateway: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = pushgateway
    path = job_file()
    report = harvest(load_job(path), RunOptions(), env)
    export(report, load_job(path).output, pushgateway=url)
    (push,) = received
    assert push["method"] == "PUT"
    # job="harvester" and the identifying labels are the grouping key (paths in base64)...
    parts = push["path"].split("/")
    assert parts[1:4] == ["metrics", "job", "harvester"]
    key = dict(zip(parts[4::2], parts[5::2], strict=True))
    assert {k: base64.urlsafe_b64decode(v).decode() for k, v in key.items() if "@" in k} == {
        "harvest_job@base64": str(path),
        "output@base64": report.output,
    }
    assert key["account"] == "default"
    # ...so the pushed metrics do not repeat them.
    assert _identities(push["body"]) == {()}
    samples = _samples(push["body"])
    assert samples[("harvester_last_run_requests", ())] == report.requests
    assert samples[("harvester_last_run_exit_code", ())] == 0


def test_a_gateway_that_fails_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a free port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = RunReport("r1", "job.yaml", str(tmp_path), str(tmp_path / "s.sqlite"), "")
    report.finished_at = "2026-03-01T03:15:09+00:00"
    prom = tmp_path / "m.prom"
    with caplog.at_level(logging.WARNING, logger="harvester.metrics"):
        export(report, tmp_path, metrics_file=prom, pushgateway=f"http://u:pw@127.0.0.1:{port}")
    assert prom.exists()  # the file is written all the same
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert f"could not push the metrics to 127.0.0.1:{port}" in record.getMessage()
    assert "pw" not in record.getMessage()


# --- before the run ----------------------------------------------------------------------------


def test_check_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_target(tmp_path / "m.prom")
    check_target(None)
    with pytest.raises(UsageError, match="no folder"):
        check_target(tmp_path / "missing" / "m.prom")
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # the extra is not installed
    with pytest.raises(UsageError, match=r"pip install 'harvester\[metrics\]'"):
        check_target(tmp_path / "m.prom")


def test_cli_writes_the_metrics_file(
    job_file: JobFile, simulator: SimulatorThread, tmp_path: Path, env: dict[str, str]
) -> None:
    prom = tmp_path / "textfile" / "harvester.prom"
    bad = run_cli("run", str(job_file()), "--metrics-file", str(prom), env=env)
    assert bad.returncode == 2 and "no folder" in bad.stderr
    assert simulator.counters()["requests"] == 0  # refused before any request
    prom.parent.mkdir()
    done = run_cli("run", str(job_file()), "--metrics-file", str(prom), env=env)
    assert done.returncode == 0, done.stderr
    samples = _samples(prom.read_text())
    assert samples[("harvester_last_run_exit_code", ())] == 0
    assert samples[("harvester_last_run_requests", ())] == simulator.counters()["requests"]
    assert done.stderr.rstrip().endswith("exit 0: every unit succeeded")  # the summary stays last
    assert (
        samples[("harvester_last_success_timestamp_seconds", ())]
        > (datetime.now(UTC) - timedelta(minutes=5)).timestamp()
    )
