"""The runs' reports, read back: what an output's recent runs did, newest first.

Every run writes its report as JSON into a folder that belongs to the output
(``OUTPUT/_harvester/runs/`` or ``OUTPUT/_state/reports/``, or beside a state file moved with
``--state``). Readers look in every such folder, count each run once (by ``run_id``), and skip
a file they cannot read with a note rather than fail: one truncated report must not hide the
others.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harvester.errors import StorageError, UsageError
from harvester.job.location import Location
from harvester.lake.fs import check_reachable, location_fs
from harvester.layout import REPORT_FOLDERS, RUNS_DIR
from harvester.ops.display import Column, fitted_table, print_table
from harvester.redact import redact

__all__ = [
    "RunHistory",
    "RunRecord",
    "check_output",
    "last_success",
    "print_runs",
    "read_runs",
    "report_folders",
    "report_folders_of",
    "runs_json",
]

# Where runs leave their reports, relative to the output; the first holding a run wins.
REPORT_GLOB = "run-*.json"
DEFAULT_LIMIT = 20


@dataclass(frozen=True)
class RunRecord:
    """The figures of one run's report that a history needs."""

    run_id: str
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_seconds: float
    exit_code: int | None
    outcome: str
    units_committed: int
    units_failed: int
    units_gone: int
    requests: int
    path: Path

    @property
    def when(self) -> datetime | None:
        """When the run started (its finish, if the start is unknown)."""
        return self.started_at or self.finished_at

    @property
    def succeeded(self) -> bool:
        """The run exited 0: every unit succeeded, or nothing was left to do."""
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601, the path as a string."""
        data = asdict(self)
        for key in ("started_at", "finished_at"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        data["path"] = str(self.path)
        return data


@dataclass
class RunHistory:
    """The runs found, newest first, and the report files that could not be read."""

    runs: list[RunRecord] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def report_folders(output: Path, *extra: Path) -> list[Path]:
    """The folders an output's reports may be in: its own, then ``extra`` (once each)."""
    folders = [output / name for name in REPORT_FOLDERS] + list(extra)
    seen: dict[Path, Path] = {}
    for folder in folders:
        seen.setdefault(folder.resolve(), folder)
    return list(seen.values())


def read_runs(folders: Iterable[Path]) -> RunHistory:
    """Every readable report in ``folders`` (missing folders are fine), newest first."""
    history = RunHistory()
    by_id: dict[str, RunRecord] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(REPORT_GLOB)):
            try:
                record = _record(path)
            except (OSError, ValueError) as exc:
                history.skipped.append((path, str(exc)))
                continue
            by_id.setdefault(record.run_id, record)
    oldest = datetime.min.replace(tzinfo=UTC)
    history.runs = sorted(by_id.values(), key=lambda r: (r.when or oldest, r.run_id), reverse=True)
    return history


def last_success(runs: Iterable[RunRecord]) -> RunRecord | None:
    """The run that finished last among those that exited 0."""
    done = [r for r in runs if r.succeeded and r.finished_at is not None]
    return max(done, key=lambda r: (r.finished_at, r.run_id), default=None)


def _record(path: Path) -> RunRecord:
    """One report file as a record; ValueError (with a short reason) when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError("not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        raise ValueError("not a run report (no run_id)")
    return RunRecord(
        run_id=data["run_id"],
        started_at=_time(data.get("started_at")),
        finished_at=_time(data.get("finished_at")),
        elapsed_seconds=_number(data.get("elapsed_seconds")),
        exit_code=data["exit_code"] if type(data.get("exit_code")) is int else None,
        outcome=str(data.get("outcome") or "unknown"),
        units_committed=int(_number(data.get("units_committed"))),
        units_failed=int(_number(data.get("units_failed"))),
        units_gone=int(_number(data.get("units_gone"))),
        requests=int(_number(data.get("requests"))),
        path=path,
    )


def _time(value: Any) -> datetime | None:
    """An ISO 8601 time as an aware datetime (UTC when it names no zone), else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _number(value: Any) -> float:
    """A report's count or duration; anything else counts as 0."""
    return float(value) if type(value) in (int, float) else 0.0


# --- rendering ---------------------------------------------------------------------------------


def check_output(output: Path) -> None:
    """Raise UsageError unless ``output`` is a folder."""
    if not output.is_dir():
        raise UsageError(f"{output}: no such output folder")


def print_runs(history: RunHistory, limit: int, console: Console, output: Path) -> None:
    """One line per run, newest first: when, how long, exit, outcome, units, requests."""
    runs = history.runs[:limit]
    if not runs:
        console.print(f"{output}: no run reports found", markup=False, highlight=False)
        return
    columns = [
        Column("started (UTC)", [_clock(r.when) for r in runs]),
        Column("took", [f"{r.elapsed_seconds:.1f} s" for r in runs], numeric=True),
        Column("exit", ["?" if r.exit_code is None else str(r.exit_code) for r in runs], True),
        Column("outcome", [r.outcome for r in runs]),
        Column("committed", [str(r.units_committed) for r in runs], numeric=True),
        Column("failed", [str(r.units_failed) for r in runs], numeric=True),
        Column("gone", [str(r.units_gone) for r in runs], numeric=True),
        Column("requests", [str(r.requests) for r in runs], numeric=True),
        Column("run", [r.run_id for r in runs]),
    ]

    def make(tight: bool) -> Table:
        padding = (0, 1, 0, 0) if tight else (0, 1)
        return Table(box=None, pad_edge=False, show_edge=False, highlight=False, padding=padding)

    # Narrow: the run's id goes first (`--json` has it), then the outcome (the exit says most).
    table = fitted_table(console, make, columns, drop=("run", "outcome"))
    print_table(console, table, blank_after=False)
    if len(history.runs) > limit:
        more = len(history.runs) - limit
        console.print(f"... and {more} older runs (--limit)", markup=False, highlight=False)


def runs_json(history: RunHistory, limit: int) -> str:
    """The newest ``limit`` runs as a JSON array, newest first."""
    return json.dumps([r.to_dict() for r in history.runs[:limit]], indent=2)


def _clock(moment: datetime | None) -> str:
    """``2026-03-14 03:15:02`` in UTC, or ``?``."""
    if moment is None:
        return "?"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def report_folders_of(output: str | Location) -> Iterator[list[Path]]:
    """The folders holding an output's run reports (``harvester runs OUTPUT``).

    A local output's own folders; an object store's ``_harvester/runs/`` copied into a
    temporary folder for the time of the ``with`` block (reports are small). A job's output
    is passed as its Location, so its ``storage:`` block (the endpoint) is kept.
    """

    try:
        location = output if isinstance(output, Location) else Location.parse(output)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if location.is_local:
        check_output(location.path)
        yield report_folders(location.path)
        return
    import pyarrow.fs as pafs

    check_reachable(location, str(output))
    fs = location_fs(location)
    selector = pafs.FileSelector(location.join(*RUNS_DIR.split("/")), allow_not_found=True)
    with tempfile.TemporaryDirectory(prefix="harvester-runs-") as folder:
        try:
            for info in fs.get_file_info(selector):
                name = info.path.rpartition("/")[2]
                if info.type == pafs.FileType.File and name.endswith(".json"):
                    with fs.open_input_stream(info.path) as fh:
                        (Path(folder) / name).write_bytes(fh.read())
        except OSError as exc:
            msg = f"{location}: cannot read the run reports: {redact(str(exc))}"
            raise StorageError(msg) from None
        yield [Path(folder)]
