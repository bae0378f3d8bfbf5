"""``harvester validate``: what a job holds, said truly; what it must not, refused by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester import cli


def _job(tmp_path: Path, accounts: list[dict[str, Any]], **top: Any) -> Path:
    job = {
        "api": {"base_url": "https://api.example.test/v1/"},
        "output": str(tmp_path / "output"),
        "start": "2026-03-01",
        "end": "2026-03-14",
        "accounts": accounts,
        **top,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _account(name: str, key: str, *hashes: str) -> dict[str, Any]:
    return {
        "name": name,
        "key_env": key,
        "secret_env": f"{name.upper()}_SECRET",
        "collections": list(hashes),
    }


def _validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_says_which_accounts_share_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = [
        _account("north", "AGENCY_KEY", "n0rth1"),
        _account("south", "SOUTH_KEY", "s0uth1"),
        _account("west", "AGENCY_KEY", "w3st01"),
    ]
    code, out, _ = _validate(_job(tmp_path, accounts), capsys)
    assert code == 0
    assert "3 accounts (north, south, west), keys from $AGENCY_KEY and $SOUTH_KEY;" in out
    assert "north and west share the key in $AGENCY_KEY (one key: one rate budget)" in out
    assert "own key" not in out


@pytest.mark.parametrize("name", ["all", "ALL", "All"])
def test_an_account_named_all_is_refused_naming_file_and_field(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # account="all" labels the run-wide metrics: an account of that name would replace them.
    accounts = [_account("north", "NORTH_KEY", "n0rth1"), _account(name, "ALL_KEY", "a11111")]
    path = _job(tmp_path, accounts)
    code, out, err = _validate(path, capsys)
    assert code == 2 and out == ""
    assert f"{path}: accounts[1].name: {name!r} is reserved" in err


def test_a_job_whose_start_is_after_its_end_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _job(
        tmp_path, [_account("north", "NORTH_KEY", "n0rth1")], start="2026-03-20", end="2026-03-01"
    )
    code, _, err = _validate(path, capsys)
    assert code == 2
    assert f"{path}: start: start 2026-03-20 is after end 2026-03-01" in err
