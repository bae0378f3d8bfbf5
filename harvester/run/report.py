"""The run report: one JSON file per run beside the state, and the human summary for stderr.

The report is what a cron job's owner reads after the fact: counts, timings, rate-limit waits,
and every failed unit with its reason and attempts. It is written atomically and redacted.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harvester.errors import EXIT_CODES, UnitError, UnitsFailed
from harvester.fetch.lanes import Lane
from harvester.layout import LAST_RUN_FILE, REPORTS_DIR
from harvester.logs import escape_controls
from harvester.redact import redact, redact_data

__all__ = ["FailedEntry", "RunReport", "report_accounts", "write_report"]


@dataclass
class FailedEntry:
    """One unit that failed in this run."""

    collection_hash: str
    start: str
    end: str
    kind: str
    reason: str
    attempts: int
    gone: bool = False  # the collection is deleted, not ours, or unknown: later runs skip it

    @classmethod
    def from_error(cls, exc: UnitError, *, gone: bool = False) -> FailedEntry:
        """From a unit's final error (its ``unit`` must be set)."""
        assert exc.unit is not None
        unit = exc.unit
        return cls(
            unit.collection_hash,
            unit.start.isoformat(),
            unit.end.isoformat(),
            exc.kind,
            exc.reason,
            exc.attempts,
            gone,
        )


@dataclass
class RunReport:
    """Everything a run did, in numbers."""

    run_id: str
    job: str
    output: str
    state: str
    started_at: str
    finished_at: str = ""
    elapsed_seconds: float = 0.0
    exit_code: int = 0
    outcome: str = ""
    stopped_by: str | None = None
    today: str = ""  # the UTC date the run took as today (windows after it have not begun)
    units_in_job: int = 0
    units_already_done: int = 0
    units_to_fetch: int = 0
    units_provisional: int = 0  # of units_to_fetch: written before their window had ended
    units_changed: int = 0  # of units_to_fetch: their calendar period's window grew or moved
    units_not_begun: int = 0  # windows starting after today: not fetched, not recorded
    units_outside: int = 0  # outside the window the run was narrowed to (RunOptions start/end)
    units_fetched: int = 0
    units_committed: int = 0  # fetched by this run and written
    units_recovered: int = 0  # fetched by an interrupted run, written at this run's start
    units_superseded: int = 0  # fetched answers dropped: the dataset already held newer ones
    units_failed: int = 0
    units_gone: int = 0  # of collections the API says are deleted or not ours (43/46)
    units_not_attempted: int = 0
    requests: int = 0
    retries: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    answers_by_code: dict[str, int] = field(default_factory=dict)  # API code, http_5xx, network
    rate_limit_answers: int = 0
    rate_limit_waits: int = 0  # requests the limiter held back
    rate_limit_wait_seconds: float = 0.0  # their waits, summed (workers wait side by side)
    # Wall-clock time at least one request (of any account) was held back: at most the run.
    rate_limit_held_seconds: float = 0.0
    rate_limit_pauses: int = 0
    page_rows_written: int = 0
    collection_rows_written: int = 0
    partitions_written: int = 0
    files_written: int = 0
    commits: int = 0  # writes of a batch of partitions (Delta: one commit per table each)
    # Part files found unreadable (truncated, not Parquet): moved aside into
    # _harvester/quarantine/, their partitions fetched again (path, reason, moved_to).
    unreadable_files: list[dict[str, str]] = field(default_factory=list)
    units_lost: int = (
        0  # done units an unreadable file held, found when rewriting it: the next run fetches them
    )
    datasets: list[str] = field(default_factory=list)
    quarantined: int = 0
    quarantine_file: str | None = None
    failed: list[FailedEntry] = field(default_factory=list)
    message: str = ""
    # Per account (a job without accounts has one, "default"): units, requests, why it stopped.
    by_account: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts_rejected: list[str] = field(default_factory=list)  # 41/44: the run exits 3

    def to_dict(self) -> dict[str, Any]:
        """The report as plain, JSON-safe, redacted data (for XCom, Dagster metadata, logs)."""
        data: dict[str, Any] = redact_data(asdict(self))
        return data

    def to_json(self) -> str:
        """The report as redacted, indented JSON (redacted before encoding: see redact_data)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @property
    def held_share(self) -> float:
        """The share of the run during which at least one request was held back (0 to 1)."""
        if self.elapsed_seconds <= 0:
            return 0.0
        return min(1.0, self.rate_limit_held_seconds / self.elapsed_seconds)

    @property
    def succeeded(self) -> bool:
        """True when the run exited 0: every unit of the job is done (or not begun yet)."""
        return self.exit_code == 0

    def raise_on_failed_units(self) -> RunReport:
        """Raise :class:`~harvester.errors.UnitsFailed` unless the run exited 0; else return self.

        For orchestrators: a task that should fail when any unit failed, and when the run
        stopped before finishing its job (rejected credentials, an unreachable budget, the API
        down too long, a signal). The error carries the run's exit code, and ``retryable``
        is False after rejected credentials (another try cannot help before the keys change).
        """
        if self.exit_code == 0:
            return self
        n = len(self.failed) or self.units_failed
        what = [f"run {self.run_id} exited {self.exit_code} ({self.outcome or 'failed'})"]
        if self.stopped_by:
            said = f": {self.message}" if self.message else ""
            what.append(f"stopped by {self.stopped_by}{said}")
        if n:
            what.append(f"{n} units failed")
        if self.failed:
            first = self.failed[0]
            unit = f"{first.collection_hash} {first.start}..{first.end}"
            what.append(f"first: {unit}: {first.reason}")
        raise UnitsFailed(
            redact("; ".join(filter(None, what))), failed=n, report=self, exit_code=self.exit_code
        )

    def summary(self) -> str:
        """A few human lines for the end of stderr."""
        lines = [
            f"{self.outcome}: {self.units_committed} units fetched and committed, "
            f"{self.units_failed} failed, {self.units_already_done} already done, "
            f"{self.units_not_attempted} not attempted, of {self.units_in_job} in the job "
            f"({self.elapsed_seconds:.1f} s, {self.requests} requests, {self.retries} retries)",
            f"rows written: {self.page_rows_written} page_stats, "
            f"{self.collection_rows_written} collection_stats in {self.files_written} files "
            f"under {', '.join(self.datasets) or self.output}",
        ]
        notes = [
            (self.units_recovered, "written from the answers an interrupted run had fetched"),
            (
                self.units_superseded,
                "fetched answers dropped: the dataset already held newer ones (another run's)",
            ),
            (self.units_provisional, "re-fetched because their window had not ended"),
            (self.units_changed, "re-fetched because their calendar period's window changed"),
            (self.units_gone, "of collections the API says are deleted or not ours (gone)"),
            (self.units_not_begun, f"not begun yet (after {self.today}): not fetched"),
            (self.units_outside, "outside the window this run was narrowed to"),
        ]
        lines += [f"units: {n} {what}" for n, what in notes if n]
        if self.rate_limit_waits or self.rate_limit_answers:
            lines.append(
                f"rate limit: requests held back {self.rate_limit_held_seconds:.1f} s "
                f"({self.held_share:.0%}) of the {self.elapsed_seconds:.1f} s run "
                f"({self.rate_limit_wait_seconds:.1f} s summed over the {self.rate_limit_waits} "
                f"requests that waited); {self.rate_limit_answers} limit answers"
            )
        for entry in self.failed[:10]:
            if entry.gone:
                lines.append(
                    f"gone: {entry.collection_hash}: {entry.reason}; later runs skip it"
                    " (--retry-gone tries it again)"
                )
                continue
            lines.append(
                f"failed: {entry.collection_hash} {entry.start}..{entry.end}: {entry.reason} "
                f"({entry.kind}, {entry.attempts} attempts)"
            )
        if len(self.failed) > 10:
            lines.append(f"... and {len(self.failed) - 10} more failed units (see the report)")
        if self.quarantined:
            lines.append(f"quarantined payloads: {self.quarantined} in {self.quarantine_file}")
        for bad in self.unreadable_files:
            lines.append(
                f"unreadable part file {bad['path']} ({bad['reason']}): moved aside to"
                f" {bad['moved_to']}; its partition is fetched again"
            )
        if self.units_lost:
            lines.append(
                f"units: {self.units_lost} held only by unreadable part files: the next run"
                " fetches them again"
            )
        if len(self.by_account) > 1:
            for name, figures in self.by_account.items():
                stopped = f"; stopped: {figures['message']}" if figures.get("message") else ""
                lines.append(
                    f"account {name}: {figures['units_fetched']} fetched, "
                    f"{figures['units_failed']} failed, {figures['requests']} requests, "
                    f"{figures['rate_limit_answers']} limit answers{stopped}"
                )
        if self.message:
            lines.append(self.message)
        lines.append(f"exit {self.exit_code}: {EXIT_CODES.get(self.exit_code, '')}")
        # One line per item: a newline or a control character inside one came from a value.
        return redact("\n".join(escape_controls(line) for line in lines))


def _write_atomic(path: Path, text: str) -> None:
    """Write beside, fsync, then rename: a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_report(report: RunReport, state_dir: Path) -> Path:
    """Write ``reports/run-<id>.json`` and ``last-run.json`` in ``state_dir``; return the first."""
    reports = state_dir / REPORTS_DIR
    reports.mkdir(parents=True, exist_ok=True)
    text = report.to_json() + "\n"
    path = reports / f"run-{report.run_id}.json"
    _write_atomic(path, text)
    _write_atomic(state_dir / LAST_RUN_FILE, text)
    return path


def report_dict(report: RunReport) -> dict[str, Any]:
    """The report as a plain dict (for the state's runs table)."""
    return asdict(report)


def report_accounts(report: RunReport, lanes: Sequence[Lane]) -> None:
    """The lanes' counters, summed into the report, and broken down by account."""
    pacers = [lane.pacer for lane in lanes]
    stats = [lane.fetcher.stats for lane in lanes if lane.fetcher is not None]
    report.requests = sum(p.calls for p in pacers)
    report.rate_limit_waits = sum(p.waits for p in pacers)
    report.rate_limit_wait_seconds = round(sum(p.waited_seconds for p in pacers), 3)
    # Per account here; the pipeline replaces it with the union of the accounts' holds.
    report.rate_limit_held_seconds = round(max((p.held_seconds for p in pacers), default=0.0), 3)
    report.rate_limit_pauses = sum(p.pauses for p in pacers)
    report.retries = sum(s.retries for s in stats)
    report.rate_limit_answers = sum(s.rate_limit_answers for s in stats)
    report.answers_by_code = dict(sorted(sum((s.answers for s in stats), Counter()).items()))
    report.errors_by_kind = dict(sum((s.errors for s in stats), Counter()))
    report.by_account = {lane.name: _figures(lane) for lane in lanes}


def _figures(lane: Lane) -> dict[str, Any]:
    """One account's line of the report."""
    stats = lane.fetcher.stats if lane.fetcher is not None else None
    return {
        "units_fetched": lane.counts["fetched"],
        "units_failed": lane.counts["failed"],
        "units_not_attempted": lane.counts["abandoned"],
        "requests": lane.pacer.calls,
        "rate_limit_held_seconds": round(lane.pacer.held_seconds, 3),
        "rate_limit_answers": stats.rate_limit_answers if stats is not None else 0,
        "answers_by_code": dict(sorted(stats.answers.items())) if stats is not None else {},
        "stopped_by": type(lane.stopped).__name__ if lane.stopped else None,
        "message": str(lane.stopped) if lane.stopped else None,
    }
