"""What a job will cost before it runs: units, calls, and the shortest time the API allows.

``harvester plan JOB`` (and ``run --dry-run``) asks for no credentials and makes no request:
the units come from the plan filtered by the state, the calls from the units (plus the pages
of ``collection.getList`` for ``discover``), and the duration from the job's rate limits —
a floor no client can beat, since every window holds at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from harvester.fetch.fetcher import LIST_PAGE_SIZE
from harvester.job.model import Job, account_discovered, accounts_of
from harvester.lake.output import read_discovered
from harvester.model import RateLimit
from harvester.ops.status import PlanSummary, plan_by_account
from harvester.pacing.limiter import format_duration, shortest_duration
from harvester.run.options import RunOptions

__all__ = ["AccountPlan", "JobPlan", "format_duration", "plan_job", "shortest_duration"]

A_DAY = 86_400.0


def _rate(limit: RateLimit) -> str:
    """``60 calls/min``, ``5 calls/s``, ``300 calls/10 s``."""
    unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(limit.seconds)
    return f"{limit.calls} calls/{unit}" if unit else f"{limit.calls} calls/{limit.seconds:g} s"


@dataclass
class AccountPlan:
    """One account's share of a job."""

    account: str
    units: int
    done: int
    provisional: int  # of to_fetch: written before their window ended, fetched again
    to_fetch: int
    not_begun: int
    gone: int
    outside: int
    calls: int
    seconds: float  # the shortest the calls can take at the account's limits
    binding: str  # the window that binds, e.g. "60 calls/min"


@dataclass
class JobPlan:
    """The whole job: per account and in total."""

    job: str
    today: str
    accounts: list[AccountPlan]
    notes: list[str] = field(default_factory=list)

    @property
    def calls(self) -> int:
        """Calls over every account."""
        return sum(a.calls for a in self.accounts)

    @property
    def seconds(self) -> float:
        """Accounts are paced apart and run side by side: the slowest sets the time."""
        return max((a.seconds for a in self.accounts), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for ``--json``."""
        data = asdict(self)
        data.update(calls=self.calls, seconds=self.seconds)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def lines(self) -> list[str]:
        """The plan for people: a line per account, the total, warnings."""
        out = [f"{self.job}: plan for today {self.today} (UTC); no request made"]
        for a in self.accounts:
            out.append(
                f"  {a.account}: {a.units:,} units in the job, {a.done:,} done,"
                f" {a.to_fetch:,} to fetch now ({a.provisional:,} provisional),"
                f" {a.not_begun:,} not begun, {a.gone:,} of gone collections"
                + (f", {a.outside:,} outside the window" if a.outside else "")
            )
        if self.calls:
            pace = (
                self.accounts[0].binding
                if len(self.accounts) == 1
                else "each account's limits (accounts run side by side)"
            )
            out.append(
                f"total: {self.calls:,} calls — at least {format_duration(self.seconds)} at {pace}"
            )
        else:
            out.append("total: 0 calls — nothing to fetch now")
        if self.seconds > A_DAY:
            out.append(
                "warning: this takes more than a day at the API's limits; split the backfill"
                " (start/end), ask the vendor for higher limits, or let nightly runs catch up"
            )
        out += [f"note: {n}" for n in self.notes]
        return out


def plan_job(job: Job, options: RunOptions) -> JobPlan:
    """The plan of ``job`` now, from the job file and the state; no request, nothing written."""
    notes: list[str] = []
    list_calls: dict[str, int] = {}
    if any(a.discover is not None for a in accounts_of(job)):
        recorded = read_discovered(job.output)
        if recorded is None:
            notes.append(
                "discover: no collection list recorded yet; the first run lists the account's"
                " collections (the units above are only the listed ones)"
            )
        else:
            listed, at = recorded
            for account in accounts_of(job):
                hashes = listed.get(account.name)
                if hashes is not None:
                    job, _ = account_discovered(job, account, hashes)
                    list_calls[account.name] = len(hashes) // LIST_PAGE_SIZE + 1
            total = sum(len(h) for h in listed.values())
            notes.append(f"discover: using the {total} collections the run of {at} listed")
    parts = plan_by_account(job, options)
    limits = {a.name: a.api.rate_limits for a in accounts_of(job)}
    accounts = [
        _account(name, summary, list_calls.get(name, 0), limits[name])
        for name, summary in parts.items()
    ]
    today = next(iter(parts.values())).today.isoformat() if parts else ""
    return JobPlan(str(job.source), today, accounts, notes)


def _account(
    name: str, summary: PlanSummary, list_calls: int, limits: Sequence[RateLimit]
) -> AccountPlan:
    counts = summary.counts
    calls = counts.to_fetch + list_calls
    seconds, binding = shortest_duration(calls, limits)
    return AccountPlan(
        account=name,
        units=summary.total,
        done=counts.already_done,
        provisional=counts.provisional,
        to_fetch=counts.to_fetch,
        not_begun=counts.not_begun,
        gone=counts.gone,
        outside=counts.outside,
        calls=calls,
        seconds=seconds,
        binding=_rate(binding) if binding is not None else "",
    )
