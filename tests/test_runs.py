"""The runs' history: read from every report folder, once per run, newest first."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from harvester.job.parse import load_job
from harvester.ops.runs import (
    RunHistory,
    last_success,
    print_runs,
    read_runs,
    report_folders,
    runs_json,
)
from harvester.run.options import RunOptions
from harvester.run.pipeline import harvest
from harvester.run.report import RunReport, write_report
from harvester.simulator import SimulatorThread
from tests.conftest import HASHES

JobFile = Callable[..., Path]


def _report(run_id: str, started: str, exit_code: int = 0, **fields: object) -> RunReport:
    report = RunReport(
        run_id=run_id,
        job="jobs/nightly.yaml",
        output="out",
        state="out/_state/state.sqlite",
        started_at=started,
        finished_at=started.replace(":00+", ":09+"),
        elapsed_seconds=9.25,
        exit_code=exit_code,
        outcome="finished" if exit_code == 0 else "finished with failures",
        units_committed=30,
        units_failed=0 if exit_code == 0 else 3,
        requests=33,
    )
    for name, value in fields.items():
        setattr(report, name, value)
    return report


def _lines(history: RunHistory, limit: int = 20) -> list[str]:
    """The printed lines, each with its runs of spaces squeezed to one."""
    buffer = io.StringIO()
    print_runs(history, limit, Console(file=buffer, width=200), Path("out"))
    return [" ".join(line.split()) for line in buffer.getvalue().splitlines()]


def test_folders_are_the_outputs_own_then_the_extra_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert report_folders(out) == [out / "_harvester" / "runs", out / "_state" / "reports"]
    extra = tmp_path / "state" / "reports"
    assert report_folders(out, extra, out / "_state" / "reports") == [
        out / "_harvester" / "runs",
        out / "_state" / "reports",
        extra,
    ]


def test_reads_every_folder_newest_first_once_per_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = out / "_state"
    new = out / "_harvester" / "runs"
    write_report(_report("r1", "2026-03-01T03:15:00+00:00"), old)
    write_report(_report("r2", "2026-03-02T03:15:00+00:00", exit_code=1), old)
    new.mkdir(parents=True)
    (new / "run-r2.json").write_text(_report("r2", "2026-03-02T03:15:00+00:00", 1).to_json())
    (new / "run-r3.json").write_text(_report("r3", "2026-03-03T03:15:00+00:00", 1).to_json())
    history = read_runs(report_folders(out))
    assert [r.run_id for r in history.runs] == ["r3", "r2", "r1"]
    assert history.runs[1].path == new / "run-r2.json"  # the output's own folder first
    assert history.skipped == []
    success = last_success(history.runs)
    assert success is not None and success.run_id == "r1"
    assert success.finished_at == datetime(2026, 3, 1, 3, 15, 9, tzinfo=UTC)


def test_unreadable_reports_are_skipped_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "_state" / "reports"
    write_report(_report("good", "2026-03-01T03:15:00+00:00"), folder.parent)
    (folder / "run-truncated.json").write_text('{"run_id": "x", "exit')
    (folder / "run-list.json").write_text("[1, 2]")
    (folder / "run-binary.json").write_bytes(b"\xff\xfe\x00")
    (folder / "notes.txt").write_text("not a report, not even looked at")
    history = read_runs(report_folders(tmp_path))
    assert [r.run_id for r in history.runs] == ["good"]
    reasons = {path.name: reason for path, reason in history.skipped}
    assert set(reasons) == {"run-truncated.json", "run-list.json", "run-binary.json"}
    assert reasons["run-truncated.json"].startswith("not JSON")
    assert reasons["run-list.json"] == "not a run report (no run_id)"
    assert reasons["run-binary.json"] == "not UTF-8 text"


def test_a_report_missing_fields_is_still_listed(tmp_path: Path) -> None:
    folder = tmp_path / "_harvester" / "runs"
    folder.mkdir(parents=True)
    (folder / "run-odd.json").write_text(json.dumps({"run_id": "odd", "started_at": "yesterday"}))
    (record,) = read_runs(report_folders(tmp_path)).runs
    assert (record.when, record.exit_code, record.outcome, record.requests) == (
        None,
        None,
        "unknown",
        0,
    )
    assert not record.succeeded and last_success([record]) is None
    assert _lines(RunHistory([record]))[1] == "? 0.0 s ? unknown 0 0 0 0 odd"


def test_one_line_per_run_and_json(tmp_path: Path) -> None:
    for day in range(1, 6):
        write_report(_report(f"r{day}", f"2026-03-0{day}T03:15:00+00:00"), tmp_path / "_state")
    history = read_runs(report_folders(tmp_path))
    lines = _lines(history, limit=3)
    assert lines[0] == "started (UTC) took exit outcome committed failed gone requests run"
    assert lines[1] == "2026-03-05 03:15:00 9.2 s 0 finished 30 0 0 33 r5"
    assert [line.split()[-1] for line in lines[1:4]] == ["r5", "r4", "r3"]
    assert lines[4] == "... and 2 older runs (--limit)"
    data = json.loads(runs_json(history, 2))
    assert [d["run_id"] for d in data] == ["r5", "r4"]
    assert data[0]["started_at"] == "2026-03-05T03:15:00+00:00"
    assert data[0]["path"].endswith("run-r5.json")
    assert _lines(RunHistory()) == ["out: no run reports found"]


def test_the_history_of_real_runs(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    path = job_file()
    first = harvest(load_job(path), RunOptions(), env)
    simulator.reconfigure(deleted=frozenset({"g0ne"}))
    failing = job_file(collections=[{"hash": HASHES[0]}, {"hash": "g0ne"}])
    second = harvest(load_job(failing), RunOptions(), env)
    assert (first.exit_code, second.exit_code) == (0, 1)
    history = read_runs(report_folders(output_dir))
    assert [r.run_id for r in history.runs] == [second.run_id, first.run_id]
    latest = history.runs[0]
    assert (latest.exit_code, latest.units_gone, latest.requests) == (1, 14, second.requests)
    success = last_success(history.runs)
    assert success is not None and success.run_id == first.run_id
