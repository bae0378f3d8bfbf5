"""Bad input at the edges: each refused with a message naming the file, field or variable."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import pytest

from harvester import cli
from harvester.errors import JobError
from harvester.job.credentials import KEY_FILE_TIMEOUT_SECONDS
from harvester.run.options import RunOptions
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import API_KEY, API_SECRET, assert_complete, run_cli

JobFile = Callable[..., Path]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err


# --- --metrics-file ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "fifo", "symlink", "folder"])
def test_a_metrics_file_that_is_not_a_regular_file_is_refused_before_any_request(
    kind: str,
    job_file: JobFile,
    simulator: SimulatorThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    target = {"device": Path("/dev/full")}.get(kind, tmp_path / "metrics.prom")
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "real.prom").write_text("")
        target.symlink_to(tmp_path / "real.prom")
    elif kind == "folder":
        target.mkdir()
    before = target.lstat().st_mode
    code, err = _run(["run", str(job_file()), "--metrics-file", str(target)], capsys)
    assert code == 2, err
    assert f"--metrics-file {target}: " in err and "not a regular file" in err
    assert target.lstat().st_mode == before  # still what it was: nothing renamed over it
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)
    assert simulator.counters()["requests"] == 0


# --- key files ---------------------------------------------------------------------------------


def _without_credentials() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLIPSNACK_")}


def test_a_fifo_nobody_writes_to_is_refused_in_time_naming_the_variable(
    job_file: JobFile, simulator: SimulatorThread, tmp_path: Path
) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    env = {**_without_credentials(), "FLIPSNACK_API_KEY_FILE": str(fifo)}
    env["FLIPSNACK_API_SECRET"] = API_SECRET
    done = run_cli("run", str(job_file()), env=env, timeout=60)  # it used to hang here
    assert done.returncode == 2, done.stderr
    assert (
        f"environment: FLIPSNACK_API_KEY_FILE: FLIPSNACK_API_KEY is unset and the file "
        f"'{fifo}' named by FLIPSNACK_API_KEY_FILE is a pipe that gave no API key within "
        f"{KEY_FILE_TIMEOUT_SECONDS:g} s"
    ) in done.stderr
    assert simulator.counters()["requests"] == 0


def test_a_key_from_a_pipe_is_read(
    job_file: JobFile, simulator: SimulatorThread, sim_config: SimulatorConfig
) -> None:
    # As a shell passes a secret without a file: FLIPSNACK_API_KEY_FILE=<(pass show ...).
    path = job_file()
    script = (
        f'FLIPSNACK_API_KEY_FILE=<(printf "%s\\n" "$KEY") '
        f'"{sys.executable}" -m harvester run "{path}" -q'
    )
    env = {**_without_credentials(), "KEY": API_KEY, "FLIPSNACK_API_SECRET": API_SECRET}
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert_complete(path, sim_config)
    assert API_KEY not in done.stderr


# --- RunOptions, the library's arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "field", "says"),
    [
        ({"start": "2026-11-20"}, "start", "found the string '2026-11-20': pass datetime.date"),
        (
            {"end": datetime(2026, 11, 20, 3, 0)},
            "end",
            "found a datetime (2026-11-20T03:00:00): pass value.date()",
        ),
        ({"today": 20261120}, "today", "expected a datetime.date or None, found int 20261120"),
        ({"refresh": "yes"}, "refresh", "expected True or False, found str 'yes'"),
        ({"grace_seconds": -1}, "grace_seconds", "expected a number of seconds >= 0"),
        ({"progress_every": "30"}, "progress_every", "seconds >= 0 or None, found str '30'"),
        ({"state_path": 3}, "state_path", "expected a path (pathlib.Path or str) or None"),
        (
            {"start": date(2026, 11, 20), "end": date(2026, 11, 1)},
            "start",
            "start 2026-11-20 is after end 2026-11-01",
        ),
    ],
)
def test_run_options_name_the_field_and_what_it_needs(
    given: dict[str, object], field: str, says: str
) -> None:
    with pytest.raises(JobError) as caught:
        RunOptions(**given)  # type: ignore[arg-type]
    assert [p.field for p in caught.value.problems] == [field]
    assert f"RunOptions: {field}: " in str(caught.value) and says in str(caught.value)
    assert caught.value.exit_code == 2


def test_harvest_refuses_a_string_date_before_anything_happens(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    from harvester import harvest, load_job

    with pytest.raises(JobError, match="found the string '2026-11-20'"):
        harvest(load_job(job_file()), RunOptions(start="2026-11-20"), env)  # type: ignore[arg-type]
    assert not output_dir.exists() and simulator.counters()["requests"] == 0
    assert RunOptions(state_path="x/state.sqlite").state_path == Path("x/state.sqlite")  # type: ignore[arg-type]


def test_every_run_option_is_checked() -> None:
    from dataclasses import fields

    from harvester.run.options import _CHECKS

    assert set(_CHECKS) == {f.name for f in fields(RunOptions)}
