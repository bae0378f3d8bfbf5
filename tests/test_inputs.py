"""Bad input at the edges: each refused with a message naming the file, field or variable."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from harvester import cli
from harvester.simulator import SimulatorThread

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
