"""Read-only views of an output: what a run would fetch now, and what the state holds.

Nothing here requests, locks or writes anything: the state is opened read-only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

from harvester.job.model import Job, accounts_of
from harvester.lake.fs import check_reachable, open_sink
from harvester.lake.output import read_discovered, read_meta
from harvester.layout import LAST_RUN_FILE
from harvester.model import system_clock
from harvester.ops.runs import last_success, read_runs, report_folders_of
from harvester.plan.windows import count_units, iter_windows
from harvester.run.commit import Ledger, PlanCounts
from harvester.run.options import RunOptions, rules_of, state_path_of
from harvester.state.record import DatasetView, job_window, open_state
from harvester.state.store import StateStore

__all__ = ["PlanSummary", "plan_by_account", "plan_pending", "status"]


@dataclass(frozen=True)
class PlanSummary:
    """How many units a job has, and what a run would do with them now."""

    total: int
    counts: PlanCounts
    today: date


def plan_pending(job: Job, options: RunOptions) -> PlanSummary:
    """Dry run: the job's units filtered as a run would filter them; no request, nothing written."""
    today = options.today or (options.clock or system_clock()).today()
    rules = rules_of(job, options, today)
    path = state_path_of(job, options)
    check_reachable(job.output, str(job.source))
    # No state yet: an empty one in memory; the dataset still says what is done.
    with open_state(path, job.granularity) as store:
        gone = store.gone_collections() if not options.retry_gone else set()
        view = DatasetView(
            store,
            open_sink(job.output, job.format, catalog=job.catalog),
            job_window(job),
            write=False,
        )
        ledger = Ledger(view, rules, gone)
        for _ in ledger.pending(iter_windows(job)):
            pass
    return PlanSummary(count_units(job), ledger.counts, today)


def plan_by_account(job: Job, options: RunOptions) -> dict[str, PlanSummary]:
    """:func:`plan_pending` for each account of the job (its listed collections)."""
    return {
        account.name: plan_pending(
            replace(job, collections=account.collections, discover=account.discover, accounts=()),
            options,
        )
        for account in accounts_of(job)
    }


def _by_account(job: Job, store: StateStore) -> list[str]:
    """One line per account of a job with several: its units done, failed, staged, those of
    the collections it discovered (as the last run recorded them) included."""
    accounts = accounts_of(job)
    if len(accounts) < 2:
        return []
    owner = {c.hash: a.name for a in accounts for c in a.collections}
    recorded = read_discovered(job.output)
    if recorded is not None:
        names = {a.name for a in accounts}
        for listed_by, hashes in recorded[0].items():
            for collection in hashes if listed_by in names else ():
                owner.setdefault(collection, listed_by)  # a listed collection keeps its account
    totals = {a.name: dict.fromkeys(("done", "failed", "staged"), 0) for a in accounts}
    for collection, counts in store.counts_by_collection().items():
        account = owner.get(collection)
        if account is not None:  # None: no account lists or discovered it any more
            for status in totals[account]:
                totals[account][status] += counts.get(status, 0)
    return [
        f"account {name}: {t['done']} units done, {t['failed']} failed, {t['staged']} staged"
        for name, t in totals.items()
    ]


def status(job: Job, options: RunOptions, *, limit: int = 20) -> str:
    """What the state says of a job's output: counts, failures, the last run; read only."""
    path = state_path_of(job, options)
    if not path.exists() and (not job.output.is_local or read_meta(job.output) is not None):
        return _without_state(job, path)
    if not path.exists():
        return f"{job.output}: no state yet ({path}): nothing was harvested here"
    with StateStore(path, readonly=True) as store:
        counts, failed, gone = store.counts(), store.failed(), store.failed(gone=True)
        accounts = _by_account(job, store)
    lines = [
        f"{job.output}: {counts['done']} units done ({counts['provisional']} provisional: their"
        f" window had not ended, the next run fetches them again), {counts['failed']} failed,"
        f" {counts['staged']} fetched but not yet written (the next run writes them)"
    ]
    lines += accounts
    lines += [
        f"failed: {f.unit}: {f.reason} ({f.kind}, {f.attempts} attempts, {f.failed_at})"
        for f in failed[:limit]
    ]
    if len(failed) > limit:
        lines.append(f"... and {len(failed) - limit} more failed units")
    if failed:
        lines.append("the next run retries every failed unit")
    by_collection: dict[str, Any] = {}
    for g in gone:
        by_collection.setdefault(g.unit.collection_hash, g)
    lines += [
        f"gone: {h}: {g.reason} (since {g.failed_at}); later runs skip it, --retry-gone tries again"
        for h, g in by_collection.items()
    ]
    lines.append(_last_run(path.parent / LAST_RUN_FILE))
    return "\n".join(line for line in lines if line)


def _last_run(path: Path) -> str:
    """One line on the last run's report, or why it cannot be read."""
    if not path.exists():
        return ""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON
        return f"last run: report unreadable ({path})"
    return (
        f"last run: {report.get('outcome')} at {report.get('finished_at')}, "
        f"exit {report.get('exit_code')} (report: {path})"
    )


def _without_state(job: Job, path: Path) -> str:
    """An output seen from a machine without its state: what the output's reports say."""

    with report_folders_of(job.output) as folders:
        history = read_runs(folders)
    lines = [
        f"{job.output}: no local state here ({path}); the dataset is the record of what is"
        " done: `harvester run JOB --dry-run` counts what is missing"
    ]
    if history.runs:
        last = history.runs[0]
        lines.append(f"last run: {last.outcome} at {last.finished_at}, exit {last.exit_code}")
        success = last_success(history.runs)
        if success is not None:
            lines.append(f"last success: {success.finished_at} (run {success.run_id})")
    return "\n".join(lines)
