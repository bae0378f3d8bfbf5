"""A damaged state database: every error names its path and says what to do."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from harvester import cli
from harvester.errors import StateError
from harvester.simulator import SimulatorThread
from harvester.state.store import StateStore
from tests.conftest import run_cli

JobFile = Callable[..., Path]
UNITS = 14 + 16 + 3


def _garble(path: Path, *, header: bool) -> None:
    """Overwrite the file's header (not a database any more) or its pages (malformed)."""
    with open(path, "r+b") as fh:
        fh.seek(0 if header else 4096)
        fh.write(b"\xff" * (100 if header else 8192))


@pytest.mark.parametrize("header", [False, True], ids=["pages", "header"])
def test_a_garbled_state_names_its_path_and_the_way_out(
    header: bool,
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = job_file()
    assert run_cli("run", str(path), "-q", env=env).returncode == 0
    state = output_dir / "_state" / "state.sqlite"
    _garble(state, header=header)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for argv in (["status", str(path)], ["run", str(path)], ["verify", str(output_dir)]):
        capsys.readouterr()
        assert cli.main(argv) == 74, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: state {state}: "), err
        assert f"move it aside (mv '{state}' '{state}.damaged') and run again" in err
    # The way out works: the dataset says what is done, and nothing is fetched again.
    requests = simulator.counters()["requests"]
    state.rename(state.with_name("state.sqlite.damaged"))
    again = run_cli("run", str(path), env=env)
    assert again.returncode == 0, again.stderr
    assert simulator.counters()["requests"] == requests
    assert f"{UNITS} already done" in again.stderr


def test_a_locked_state_says_who_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    StateStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateError) as caught, StateStore(path) as store:
            store.set_meta("output_id", "x")
    finally:
        holder.close()
    assert str(caught.value).startswith(f"state {path}: database is locked: another process")
    assert caught.value.exit_code == 74
