"""Tables at any width: a number is never cut; text wraps, gaps narrow, text columns go first."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from harvester import cli
from harvester.ops.summary import summarize
from tests.conftest import run_cli

JobFile = Callable[..., Path]
FIGURES = ("impressions", "views", "clicks", "time_spent", "downloads")


def _print(
    argv: list[str], width: int, capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch
) -> list[str]:
    mp.setenv("COLUMNS", str(width))
    capsys.readouterr()
    assert cli.main(argv) == 0
    return capsys.readouterr().out.splitlines()


def _tables(lines: list[str]) -> list[list[str]]:
    """The lines of each titled table, title to blank line (the footer after one blank)."""
    tables: list[list[str]] = []
    for i, line in enumerate(lines):
        if line in ("Collections", "Busiest pages (top 3 by views)"):
            end = lines.index("", i)
            if lines[end + 1].lstrip().startswith("all "):
                end = lines.index("", end + 1)
            tables.append(lines[i + 1 : end])
    return tables


@pytest.mark.parametrize("width", [80, 60])
def test_summary_tables_never_cut_a_number(
    width: int,
    job_file: JobFile,
    output_dir: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_cli("run", str(job_file()), "-q", env=env).returncode == 0
    lines = _print(["summary", str(output_dir)], width, capsys, monkeypatch)
    assert lines[0].startswith(f"{output_dir}: 3 collections")
    # The tables fit; the sentences around them (the path, the coverage) are lines of their own.
    tables = _tables(lines)
    assert len(tables) == 2 and all(len(t) > 5 for t in tables), "\n".join(lines)
    assert max(len(line) for table in tables for line in table) <= width, "\n".join(lines)
    tokens = {token for line in lines for token in line.split()}
    found = summarize(output_dir)
    for c in found.collections:
        assert c.collection_hash in tokens
        for figure in FIGURES:
            assert f"{getattr(c, figure):,}" in tokens, (figure, "\n".join(lines))
        for page in c.top_pages:
            assert {f"{page.views:,}", f"{page.clicks:,}", f"{page.time_spent:,}"} <= tokens
    for figure in FIGURES:  # the totals' footer
        assert f"{sum(getattr(c, figure) for c in found.collections):,}" in tokens
    assert "…" not in "\n".join(lines)


@pytest.mark.parametrize("width", [80, 60])
def test_runs_never_cut_a_number_nor_drop_the_exit_column(
    width: int,
    job_file: JobFile,
    output_dir: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_cli("run", str(job_file()), "-q", env=env).returncode == 0
    reports = output_dir / "_state" / "reports"
    report = json.loads(next(reports.glob("run-*.json")).read_text())
    report.update(
        run_id="20261201T031500000000Z",
        started_at="2026-12-01T03:15:00+00:00",
        elapsed_seconds=86_399.9,
        exit_code=1,
        outcome="finished with failures",
        units_committed=1_234_567,
        units_failed=18_400,
        units_gone=77,
        requests=18_452_044,
    )
    (reports / "run-20261201T031500000000Z.json").write_text(json.dumps(report))
    lines = _print(["runs", str(output_dir)], width, capsys, monkeypatch)
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    assert "exit" in " ".join(lines[:2]).split()
    tokens = [line.split() for line in lines]
    big = next(row for row in tokens if "1234567" in row)
    for figure in ("86399.9", "1", "1234567", "18400", "77", "18452044"):
        assert figure in big, (figure, "\n".join(lines))
    assert "…" not in "\n".join(lines)
