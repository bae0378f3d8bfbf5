"""Bad input at the edges: each refused with a message naming the file, field or variable."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harvester import cli
from harvester.job.credentials import KEY_FILE_TIMEOUT_SECONDS
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
