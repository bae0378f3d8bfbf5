"""``harvester status``: what the state holds, per account, discovered collections included."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester import cli
from harvester.simulator import SimulatorThread
from tests.conftest import run_cli
from tests.test_accounts import CATALOG, HASHES, _accounts_job, _env
from tests.test_accounts import accounts_sim as accounts_sim  # the fixture

DAYS = 14


def test_status_counts_the_collections_an_account_discovered(
    tmp_path: Path, accounts_sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    # south lists one collection and discovers the catalog; c4t001 stays north's (it lists it).
    path = _accounts_job(
        tmp_path,
        accounts_sim.base_url,
        north={"collections": [*HASHES["north"], CATALOG[0]]},
        south={"discover": True},
    )
    result = run_cli("run", str(path), "-q", env=_env())
    assert result.returncode == 0, result.stderr
    capsys.readouterr()
    assert cli.main(["status", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"account north: {3 * DAYS} units done, 0 failed, 0 staged" in lines
    assert f"account south: {2 * DAYS} units done, 0 failed, 0 staged" in lines  # s0uth1, c4t002
    assert f"account west: {2 * DAYS} units done, 0 failed, 0 staged" in lines
    assert lines[0].startswith(f"{tmp_path / 'output'}: {7 * DAYS} units done")
