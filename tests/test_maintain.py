"""``harvester maintain``: under the output's lock, or after the run holding it with --wait."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from harvester import cli
from harvester.lake.lock import OutputLock
from harvester.simulator import SimulatorThread
from tests.conftest import run_cli

JobFile = Callable[..., Path]


def test_maintain_waits_for_the_run_holding_the_lock_when_asked(
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli("run", str(job_file(format="delta")), "-q", env=env).returncode == 0
    held = OutputLock(output_dir)
    held.acquire()  # a run writing the output
    try:
        capsys.readouterr()
        assert cli.main(["maintain", str(output_dir)]) == 4
        assert "use --wait to wait" in capsys.readouterr().err  # what it suggests, it accepts
        codes: list[int] = []
        waiting = threading.Thread(
            target=lambda: codes.append(cli.main(["maintain", str(output_dir), "--wait"]))
        )
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not codes  # held back by the run's lock
    finally:
        held.release()
    waiting.join(60)
    assert codes == [0]
    assert "collection_stats: " in capsys.readouterr().out
