"""The command line, as a user runs it: ``python -m harvester``, exit codes, messages, streams."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester.job.parse import load_job
from harvester.plan.windows import count_units
from harvester.run.report import FailedEntry, RunReport
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import HASHES, assert_complete, job_dict, run_cli

JobFile = Callable[..., Path]
UNITS = 14 + 16 + 3  # the conftest job: 3 collections over their own ranges, by day


def summary_of(output: Path) -> str:
    """The human summary the run's report (last-run.json) stands for."""
    report = json.loads((output / "_state" / "last-run.json").read_text())
    report["failed"] = [FailedEntry(**f) for f in report["failed"]]
    return RunReport(**report).summary()


# --- exit codes ------------------------------------------------------------------------------


def test_exit_0_when_every_unit_is_harvested(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    path = job_file()
    done = run_cli("run", str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.endswith(summary_of(output_dir) + "\n")
    assert f"finished: {UNITS} units fetched and committed, 0 failed" in done.stderr
    assert done.stderr.rstrip().endswith("exit 0: every unit succeeded")
    assert_complete(path, sim_config)


def test_exit_1_when_some_units_fail(
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(faults={"bad_payload": 0.3}, seed=3)
    done = run_cli("run", str(job_file()), env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.endswith(summary_of(output_dir) + "\n")
    report = json.loads((output_dir / "_state" / "last-run.json").read_text())
    failed = report["units_failed"]
    assert failed > 0
    assert f"{UNITS - failed} units fetched and committed, {failed} failed" in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("failed: ")]
    assert len(lines) == min(failed, 10)
    assert all("(invalid_payload, 1 attempts)" in line for line in lines)


def test_a_gone_collection_is_named_once_and_skipped_by_the_next_run(
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(deleted=frozenset({HASHES[2]}))  # 3 days of it: code 43
    path = job_file()
    done = run_cli("run", str(path), env=env)
    assert done.returncode == 1, done.stderr
    assert f"{UNITS - 3} units fetched and committed, 0 failed" in done.stderr
    assert "units: 3 of collections the API says are deleted or not ours (gone)" in done.stderr
    gone = [line for line in done.stderr.splitlines() if line.startswith("gone: ")]
    assert gone == [
        f"gone: {HASHES[2]}: code 43: forbidden (collection deleted or owned by another user);"
        " later runs skip it (--retry-gone tries it again)"
    ]
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and HASHES[2] in errors[0]  # one line per collection, not per day
    simulator.reset_counters()
    again = run_cli("run", str(path), env=env)
    assert again.returncode == 0, again.stderr
    assert simulator.counters()["requests"] == 0 and "nothing to do" in again.stderr


def test_exit_3_when_the_api_rejects_the_credentials(
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    done = run_cli("run", str(job_file()), env={**env, "FLIPSNACK_API_SECRET": "not-the-secret"})
    assert done.returncode == 3, done.stderr
    assert done.stderr.endswith(summary_of(output_dir) + "\n")
    assert "the API rejected the credentials: code 44, invalid signature" in done.stderr
    assert done.stderr.rstrip().endswith("exit 3: the API rejected the credentials (codes 41/44)")


# --- every bad job exits 2, names the file and the field, requests nothing, writes nothing ------


def _without(job: dict[str, Any], key: str) -> dict[str, Any]:
    job.pop(key)
    return job


def _with(job: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = job
    for name in parents:
        node = node[int(name)] if isinstance(node, list) else node[name]
    node[last] = value
    return job


BAD_JOBS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "unknown-key": (
        lambda j: _with(_without(j, "concurrency"), "concurency", 4),
        "concurency: unknown key 'concurency'; did you mean 'concurrency'?",
    ),
    "no-start-anywhere": (
        lambda j: _without(j, "start"),
        "start: required: collections[0], collections[2] give no start of their own; "
        "set a job-level start, or one per collection",
    ),
    "granularity-typo": (
        lambda j: _with(j, "granularity", "dya"),
        "granularity: expected one of day, week, month, range, found string 'dya'; "
        "did you mean 'day'?",
    ),
    "concurrency-as-words": (
        lambda j: _with(j, "concurrency", "four"),
        "concurrency: expected an integer from 1 to 1000, found string 'four'",
    ),
    "rate-limit-without-seconds": (
        lambda j: _with(j, "api.rate_limits", [{"calls": 5}]),
        "api.rate_limits[0].seconds: required",
    ),
    "impossible-date": (
        lambda j: _with(j, "start", "2026-02-30"),
        "start: not a real calendar date: '2026-02-30' (day is out of range for month)",
    ),
    "start-after-end": (
        lambda j: _with(
            j, "collections", [{"hash": HASHES[1], "start": "2026-03-25", "end": "2026-03-20"}]
        ),
        "collections[0]: start 2026-03-25 is after end 2026-03-20",
    ),
    "job-start-after-end": (
        lambda j: _with(_with(j, "start", "2026-03-20"), "collections", [HASHES[0]]),
        "start: start 2026-03-20 is after end 2026-03-14 (the job-level range, used by "
        "collections[0] and any others that give neither start nor end)",
    ),
    "duplicate-hash": (
        lambda j: _with(j, "collections", [*j["collections"], {"hash": HASHES[1]}]),
        f"collections[3].hash: duplicate: '{HASHES[1]}' is already collections[1]",
    ),
    "empty-collections": (
        lambda j: _with(j, "collections", []),
        "collections: expected a non-empty list of collections, found list []",
    ),
    "refresh-days-past-a-century": (
        lambda j: _with(j, "refresh_days", 100_000_000),
        "refresh_days: expected an integer from 0 to 36600 (about a century), found 100000000",
    ),
    "timeout-past-an-hour": (
        lambda j: _with(j, "api.timeout_seconds", 1e300),
        "api.timeout_seconds: expected a finite number of seconds > 0 and at most 3600 "
        "(an hour), found 1e+300",
    ),
    "window-calls-past-a-million": (
        lambda j: _with(j, "api.rate_limits", [{"calls": 10**20, "seconds": 1}]),
        "api.rate_limits[0].calls: expected an integer from 1 to 1000000, found "
        "100000000000000000000",
    ),
}


def assert_refused(done: Any, simulator: SimulatorThread, output_dir: Path, *lines: str) -> None:
    """Exit 2 with exactly these problem lines, before any request, with nothing written."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == ["error: invalid job:", *lines]
    assert simulator.counters()["requests"] == 0
    assert not output_dir.exists()


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_a_bad_job_exits_2_naming_file_and_field(
    case: str,
    tmp_path: Path,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    change, problem = BAD_JOBS[case]
    job = copy.deepcopy(job_dict(simulator.base_url, output_dir))
    change(job)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    done = run_cli("run", str(path), env=env)
    assert_refused(done, simulator, output_dir, f"{path}: {problem}")


def test_a_yaml_syntax_error_names_line_and_column(
    tmp_path: Path,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    bad = "granularity: day: week"  # a second ':' where YAML allows no mapping value
    text = (
        f"api:\n  base_url: {simulator.base_url}\noutput: {output_dir}\n"
        f"start: 2026-03-01\n{bad}\ncollections: [{HASHES[0]}]\n"
    )
    path = tmp_path / "job.yaml"
    path.write_text(text)
    line = text.splitlines().index(bad) + 1
    column = bad.rindex(":") + 1
    done = run_cli("run", str(path), env=env)
    assert (line, column) == (5, 17)
    assert_refused(
        done,
        simulator,
        output_dir,
        f"{path}: <yaml>: invalid YAML at line {line}, "
        f"column {column}: mapping values are not allowed here",
    )


def test_missing_credential_variables_exit_2_before_any_request(
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    path = job_file()
    bare = {k: v for k, v in env.items() if not k.startswith("FLIPSNACK_")}
    done = run_cli("run", str(path), env=bare)
    hint = "not set or empty: export {0}=<your API {1}>, or set {0}_FILE to a file that holds it"
    assert_refused(
        done,
        simulator,
        output_dir,
        "environment: FLIPSNACK_API_KEY: " + hint.format("FLIPSNACK_API_KEY", "key"),
        "environment: FLIPSNACK_API_SECRET: " + hint.format("FLIPSNACK_API_SECRET", "secret"),
    )


def test_a_job_file_that_does_not_exist_exits_2(
    tmp_path: Path,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    path = tmp_path / "no-such-job.yaml"
    done = run_cli("run", str(path), env=env)
    assert_refused(done, simulator, output_dir, f"{path}: <file>: file not found")


def test_every_problem_of_a_file_is_reported_at_once(
    tmp_path: Path,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    job = job_dict(simulator.base_url, output_dir, granularity="dya", concurrency="four")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    done = run_cli("run", str(path), env=env)
    assert done.returncode == 2
    problems = done.stderr.splitlines()[1:]
    assert [p.split(": ")[1] for p in problems] == ["concurrency", "granularity"]


# --- the other options --------------------------------------------------------------------


def plan_line(stdout: str) -> str:
    """The per-account line of a printed plan."""
    return stdout.splitlines()[1].strip()


def test_dry_run_prints_the_plan_without_a_request(
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    path = job_file()
    assert count_units(load_job(path)) == UNITS
    done = run_cli("run", str(path), "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith("(UTC); no request made")
    assert plan_line(done.stdout) == (
        f"default: {UNITS} units in the job, 0 done, {UNITS} to fetch now (0 provisional),"
        " 0 not begun, 0 of gone collections"
    )
    assert simulator.counters()["requests"] == 0 and not output_dir.exists()
    assert done.stdout == run_cli("plan", str(path), env={}).stdout  # the same, no credentials
    # After a run has harvested part of the job, the dry run says what is left.
    simulator.reconfigure(deleted=frozenset({HASHES[2]}))
    assert run_cli("run", str(path), env=env).returncode == 1
    simulator.reset_counters()
    done = run_cli("run", str(path), "--dry-run", env=env)
    assert plan_line(done.stdout) == (
        f"default: {UNITS} units in the job, {UNITS - 3} done, 0 to fetch now (0 provisional),"
        " 0 not begun, 3 of gone collections"
    )
    assert "total: 0 calls — nothing to fetch now" in done.stdout
    done = run_cli("run", str(path), "--dry-run", "--retry-gone", env=env)
    assert "3 to fetch now" in plan_line(done.stdout)
    assert simulator.counters()["requests"] == 0


def test_json_log_format_is_one_object_per_log_line(
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(faults={"http503": 0.2})  # some retries to log
    path = job_file(retry={"attempts": 12, "max_backoff_seconds": 0.05})
    done = run_cli("run", str(path), "--log-format", "json", "-v", env=env)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]  # every one parses
    assert records[-1]["logger"] == "harvester.summary"
    assert records[-1]["message"] == summary_of(output_dir)  # the summary, as one record
    assert all(
        isinstance(r, dict) and set(r) >= {"time", "level", "logger", "message"} for r in records
    )
    assert all(r["logger"].startswith("harvester") for r in records)
    retries = [r for r in records if r["message"].endswith("retrying")]
    assert len(retries) == simulator.counters()["faults"]["http503"] > 0
    assert {r["level"] for r in records} >= {"info", "debug"}


def test_help_lists_the_commands_and_exit_codes() -> None:
    done = run_cli("--help")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: harvester ")
    for text in ("run", "simulate", "exit codes:\n    0  every unit succeeded", "3  the API"):
        assert text in done.stdout
    done = run_cli("run", "--help")
    assert done.returncode == 0
    for option in ("--dry-run", "--log-format", "--state", "--refresh", "--wait"):
        assert option in done.stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["run"], "the following arguments are required: job"),
        (["run", "JOB", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", "JOB", "--log-format", "xml"], "argument --log-format: invalid choice: 'xml'"),
        (
            ["run", "JOB", "--grace", "soon"],
            "argument --grace: expected a number of seconds >= 0, found 'soon'",
        ),
        (
            ["run", "JOB", "--grace", "-1"],
            "argument --grace: expected a number of seconds >= 0, found '-1'",
        ),
        (
            ["run", "JOB", "--grace=-0.5"],
            "argument --grace: expected a number of seconds >= 0, found '-0.5'",
        ),
        (["run", "JOB", "--grace", "nan"], "argument --grace: expected a number of seconds >= 0"),
        (["run", "JOB", "-q", "-v"], "argument -v/--verbose: not allowed with argument -q/--quiet"),
        (["run", "JOB", "--verbose", "--quiet"], "argument -q/--quiet: not allowed with argument"),
        ([], "the following arguments are required: command"),
        (["harvest"], "argument command: invalid choice: 'harvest'"),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str],
    complaint: str,
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    path = job_file()
    done = run_cli(*[str(path) if a == "JOB" else a for a in args], env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: harvester")
    assert f"error: {complaint}" in done.stderr
    assert simulator.counters()["requests"] == 0 and not output_dir.exists()


def test_the_demo_job_harvests_from_the_bundled_simulator(tmp_path: Path) -> None:
    """What `make harvest` runs, on a fresh folder: no credentials, exact rows, exit 0."""
    from harvester.job.parse import load_job
    from harvester.simulator import SimulatorConfig
    from tests.conftest import actual_rows, expected_rows

    demo = Path(__file__).parent.parent / "configs" / "demo.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPSNACK_")}
    done = run_cli("run", str(demo), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "finished: 93 units fetched and committed" in done.stderr
    job = load_job(demo)
    # The demo's simulator runs with the default seed and catalogue; output is relative to cwd.
    assert actual_rows(tmp_path / job.output) == expected_rows(job, SimulatorConfig())
    again = run_cli("run", str(demo), env=env, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_an_output_that_cannot_be_written_exits_74(
    job_file: JobFile, simulator: SimulatorThread, tmp_path: Path, env: dict[str, str]
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    path = job_file()
    job = yaml.safe_load(path.read_text())
    job["output"] = str(blocker / "output")
    path.write_text(yaml.safe_dump(job))
    done = run_cli("run", str(path), env=env)
    assert done.returncode == 74, done.stderr
    assert done.stderr.startswith("error: cannot read or write local files:")
    assert "Traceback" not in done.stderr
    assert simulator.counters()["requests"] == 0


def test_status_reports_counts_failures_and_the_last_run(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    path = job_file()
    before = run_cli("status", str(path), env=env)
    assert before.returncode == 0 and "no state yet" in before.stdout
    simulator.reconfigure(deleted=frozenset({HASHES[2]}))
    assert run_cli("run", str(path), env=env).returncode == 1  # its 3 units: gone
    simulator.reconfigure(faults={"http503": 1.0})
    # Three more days of HASHES[0], each answered HTTP 503.
    failing = job_file(end="2026-03-17", retry={"attempts": 1, "max_backoff_seconds": 0.01})
    assert run_cli("run", str(failing), env=env).returncode == 1
    simulator.reset_counters()
    done = run_cli("status", str(path), env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"{output_dir}: 30 units done (0 provisional: their window had not ended, the next run"
        " fetches them again), 3 failed, 0 fetched but not yet written (the next run writes them)"
    )
    assert [line.split(":")[0] for line in lines[1:4]] == ["failed"] * 3
    assert all("HTTP 503" in line and "(http, 1 attempts" in line for line in lines[1:4])
    assert lines[4] == "the next run retries every failed unit"
    assert (
        lines[5].startswith(f"gone: {HASHES[2]}: code 43: forbidden") and "--retry-gone" in lines[5]
    )
    assert lines[6].startswith("last run: finished with failures at ") and "exit 1" in lines[6]
    assert simulator.counters()["requests"] == 0  # status asks the API nothing


# --- validate, summary, runs -----------------------------------------------------------------


def test_validate_a_good_job(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path
) -> None:
    path = job_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPSNACK_")}
    done = run_cli("validate", str(path), env=env)  # no credentials needed
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"{path}: valid (3 collections, granularity day, {UNITS} units from 2026-03-01 to "
        f"2026-03-20, output {output_dir}, from {simulator.base_url}, credentials from "
        "$FLIPSNACK_API_KEY and $FLIPSNACK_API_SECRET)\n"
    )
    assert simulator.counters()["requests"] == 0 and not output_dir.exists()


@pytest.mark.parametrize("case", ["unknown-key", "granularity-typo", "duplicate-hash"])
def test_validate_says_what_run_says(
    case: str, tmp_path: Path, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    change, problem = BAD_JOBS[case]
    job = copy.deepcopy(job_dict(simulator.base_url, output_dir))
    change(job)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    checked = run_cli("validate", str(path), env=env)
    assert_refused(checked, simulator, output_dir, f"{path}: {problem}")
    assert checked.stderr == run_cli("run", str(path), env=env).stderr


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # anything but \t and \n


def test_summary_off_a_terminal_is_plain_text(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    assert run_cli("run", str(job_file()), env=env).returncode == 0
    for day in ("2026-03-09", "2026-03-10"):
        for dataset in ("page_stats", "collection_stats"):
            shutil.rmtree(output_dir / dataset / f"period_start={day}")
    plain = {k: v for k, v in env.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")}
    done = run_cli("summary", str(output_dir), env=plain)
    assert done.returncode == 0, done.stderr
    assert not CONTROL.search(done.stdout), repr(done.stdout)
    lines = done.stdout.splitlines()
    assert (
        lines[0]
        == f"{output_dir}: 3 collections, 2026-03-01..2026-03-20, by day (from output.json)"
    )
    assert f"  {HASHES[0]}: 12/14 days; missing 2026-03-09..2026-03-10" in lines
    assert f"  {HASHES[1]}: 14/16 days; missing 2026-03-09..2026-03-10" in lines
    assert max(len(line) for line in lines) > 80  # not squeezed to a terminal's width
    assert simulator.counters()["requests"] == UNITS  # the summary asked the API nothing


def test_summary_writes_a_chart(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    assert run_cli("run", str(job_file()), env=env).returncode == 0
    png = output_dir.parent / "chart.png"
    done = run_cli("summary", str(output_dir), "--top", "2", "--png", str(png), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"chart: {png}\n"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["summary", "OUT/nope"], "error: OUT/nope: no such output folder"),
        (["summary", "OUT", "--png", "OUT/no/such/dir.png"], "error: --png OUT/no/such/dir.png"),
        (["summary", "OUT", "--since", "2026-02-30"], "argument --since: not a real calendar"),
        (["summary", "OUT", "--top", "0"], "argument --top: expected a whole number"),
        (["runs", "OUT/nope"], "error: OUT/nope: no such output folder"),
        (["runs", "OUT", "--limit", "x"], "argument --limit: expected a whole number"),
    ],
)
def test_reading_commands_exit_2_on_bad_arguments(
    args: list[str], complaint: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = run_cli(*[a.replace("OUT", str(out)) for a in args])
    assert done.returncode == 2
    assert complaint.replace("OUT", str(out)) in done.stderr


def test_runs_lists_the_recent_runs(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    path = job_file()
    assert run_cli("run", str(path), env=env).returncode == 0
    assert run_cli("run", str(path), env=env).returncode == 0  # nothing to do
    (output_dir / "_state" / "reports" / "run-broken.json").write_text("{")
    done = run_cli("runs", str(output_dir), env=env)
    assert done.returncode == 0
    assert not CONTROL.search(done.stdout)
    lines = [" ".join(line.split()) for line in done.stdout.splitlines()]
    assert lines[0] == "started (UTC) took exit outcome committed failed gone requests run"
    assert [line.split()[4:9] for line in lines[1:]] == [
        ["0", "nothing", "to", "do", "0"],
        ["0", "finished", str(UNITS), "0", "0"],
    ]
    assert done.stderr.startswith(f"skipped {output_dir}/_state/reports/run-broken.json: not JSON")
    as_json = json.loads(run_cli("runs", str(output_dir), "--json", "--limit", "1").stdout)
    assert [r["outcome"] for r in as_json] == ["nothing to do"]


def test_help_lists_the_reading_commands_and_the_metrics_options() -> None:
    done = run_cli("--help")
    for command in ("validate", "status", "summary", "runs"):
        assert command in done.stdout
    run = run_cli("run", "--help").stdout
    assert "--metrics-file" in run and "--pushgateway" in run
    summary = run_cli("summary", "--help").stdout
    for option in ("--since", "--until", "--collection", "--account", "--top", "--png"):
        assert option in summary


def test_discover_stops_when_the_api_ignores_from(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    """An API that answers the first page whatever ``from`` says: no endless paging."""
    from tests.conftest import actual_rows

    catalog = tuple(f"book{i:03d}" for i in range(57))  # more than one getList page of 50
    simulator.reconfigure(catalog=catalog, list_ignores_from=True)
    path = job_file(discover=True, collections=[], start="2026-03-01", end="2026-03-01")
    done = run_cli("run", str(path), env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "seems to ignore 'from'" in line]
    assert len(warnings) == 1, done.stderr
    assert "keeping the 50 collections found" in warnings[0]
    assert simulator.counters()["requests"] == 2 + 50  # two list pages, then one call per unit
    _, collections = actual_rows(output_dir)
    assert {c[0] for c in collections} == set(catalog[:50])


def test_output_under_a_tilde_goes_to_the_home_folder(
    job_file: JobFile, simulator: SimulatorThread, tmp_path: Path, env: dict[str, str]
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    path = job_file()
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "output": "~/flip"}))
    done = run_cli("run", str(path), env={**env, "HOME": str(home)}, cwd=work)
    assert done.returncode == 0, done.stderr
    assert (home / "flip" / "page_stats").is_dir()
    assert (home / "flip" / "_state" / "last-run.json").is_file()
    assert list(work.iterdir()) == []  # no folder named '~'


def test_the_largest_bounds_run_to_the_end(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig, env: dict[str, str]
) -> None:
    """refresh_days, timeouts, backoff and windows at their upper bounds stay in range."""
    api = {
        "base_url": simulator.base_url,
        "timeout_seconds": 3600,
        "rate_limits": [{"calls": 1_000_000, "seconds": 2_678_400}],
    }
    retry = {"attempts": 2, "max_backoff_seconds": 86_400, "circuit_breaker_seconds": 604_800}
    path = job_file(api=api, retry=retry, refresh_days=36_600)
    assert run_cli("run", str(path), env=env).returncode == 0
    again = run_cli("run", str(path), env=env)  # every unit is within the refresh days
    assert again.returncode == 0, again.stderr
    assert f"finished: {UNITS} units fetched and committed" in again.stderr
    assert_complete(path, sim_config)


def _capped_memory() -> None:
    """In the child: 1 GiB of address space, so reading a file whole fails fast, not the host."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))


@pytest.mark.parametrize("source", ["dev-zero", "large-file"])
def test_an_unbounded_key_file_exits_2_naming_the_variable(
    source: str, job_file: JobFile, simulator: SimulatorThread, output_dir: Path, tmp_path: Path
) -> None:
    key_file = Path("/dev/zero")
    if source == "large-file":
        key_file = tmp_path / "key"
        with open(key_file, "wb") as fh:
            fh.write(b"KEY-PREFIX-d41c-not-to-be-echoed")
            fh.truncate(66 * 2**20)  # 66 MB, sparse
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPSNACK_")}
    env.update(FLIPSNACK_API_KEY_FILE=str(key_file), FLIPSNACK_API_SECRET="SECRET-0f2b-test")
    path = job_file()
    done = subprocess.run(
        [sys.executable, "-m", "harvester", "run", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_capped_memory,
    )
    assert_refused(
        done,
        simulator,
        output_dir,
        f"environment: FLIPSNACK_API_KEY_FILE: FLIPSNACK_API_KEY is unset and the file "
        f"'{key_file}' named by FLIPSNACK_API_KEY_FILE is larger than 64 KiB: expected a file "
        "holding only the API key",
    )
    assert "KEY-PREFIX" not in done.stderr


@contextlib.contextmanager
def _unwritable(folder: Path) -> Iterator[None]:
    """``folder`` and everything in it unwritable, even by root (chattr +i), then writable again."""
    paths = [str(p) for p in (folder, *folder.rglob("*"))]
    if os.geteuid() != 0:  # permissions hold for everyone else
        modes = {p: os.stat(p).st_mode for p in paths}
        for p in paths:
            os.chmod(p, 0o555 if os.path.isdir(p) else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                os.chmod(p, mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("root ignores permissions, and chattr is not installed")
    if subprocess.run(["chattr", "+i", *paths], capture_output=True).returncode != 0:
        subprocess.run(["chattr", "-i", *paths], capture_output=True)
        pytest.skip("root ignores permissions, and chattr +i is not allowed here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *paths], check=True, capture_output=True)


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and its mtime (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_status_needs_no_write_access_and_writes_nothing(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    path = job_file()
    assert run_cli("run", str(path), env=env).returncode == 0
    state_dir = output_dir / "_state"
    before = _files(state_dir)
    assert "state.sqlite" in before and not [n for n in before if n.endswith(("-wal", "-shm"))]
    simulator.reset_counters()
    with _unwritable(state_dir):
        done = run_cli("status", str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{output_dir}: {UNITS} units done (0 provisional")
    assert "last run: finished at " in done.stdout
    assert _files(state_dir) == before  # same bytes, same times, no -wal or -shm
    assert simulator.counters()["requests"] == 0


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"', "\udcff"])
def test_status_tolerates_an_unreadable_last_run_report(
    text: str, job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    path = job_file()
    assert run_cli("run", str(path), env=env).returncode == 0
    last = output_dir / "_state" / "last-run.json"
    last.write_bytes(text.encode("utf-8", "surrogateescape"))
    done = run_cli("status", str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"last run: report unreadable ({last})"


def test_a_grace_of_zero_seconds_is_accepted(
    job_file: JobFile, simulator: SimulatorThread, env: dict[str, str]
) -> None:
    done = run_cli("run", str(job_file()), "--dry-run", "--grace", "0", "-q", env=env)
    assert done.returncode == 0, done.stderr


def test_help_lists_every_exit_code_the_cli_can_return() -> None:
    """Every EXIT_* constant and every error's exit code, in --help and in the README's table."""
    from harvester import errors

    def subclasses(cls: type[errors.HarvesterError]) -> list[type[errors.HarvesterError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    codes |= {cls.exit_code for cls in subclasses(errors.HarvesterError)}
    assert codes == set(errors.EXIT_CODES) == {0, 1, 2, 3, 4, 70, 74, 130, 141, 143}
    done = run_cli("--help")
    assert done.returncode == 0
    listed = done.stdout.split("exit codes:\n", 1)[1].splitlines()
    assert listed == [f"  {code:>3}  {meaning}" for code, meaning in errors.EXIT_CODES.items()]
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1].strip() for line in readme.splitlines() if line.startswith("| ")]
    in_readme = {int(c) for row in rows for c in row.split(" / ") if c.isdigit()}
    assert codes <= in_readme
