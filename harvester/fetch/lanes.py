"""The accounts of a run: each with its credentials, budget, circuit breaker, session, fetcher.

A job without ``accounts`` has one account, ``default``, and runs exactly as before: a rejected
key or an API down too long stops the run. With several accounts, each :class:`Lane` stops
alone: its rejected credentials (41/44) fail its units with that reason, its API down too
long leaves its units for the next run, and the other accounts go on.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from harvester.api import StatsClient, make_session
from harvester.budget import Pacer, open_budget
from harvester.config import Account, Credentials, Job, accounts_of, load_credentials
from harvester.errors import HarvesterError, JobError, PermanentError, Problem
from harvester.fetch import UnitFetcher
from harvester.model import Clock
from harvester.pool import StopToken
from harvester.report import RunReport
from harvester.retry import CircuitBreaker, build_retrying

__all__ = [
    "AccountStopped",
    "Lane",
    "close_lanes",
    "load_account_credentials",
    "open_lanes",
    "report_accounts",
]

log = logging.getLogger("harvester")


class AccountStopped(PermanentError):
    """A unit not attempted because its account was stopped (credentials rejected)."""

    kind = "account_stopped"


@dataclass(eq=False)
class Lane:
    """One account's moving parts in a run, and what it did."""

    account: Account
    base_url: str
    credentials: Credentials
    pacer: Pacer
    breaker: CircuitBreaker
    fetcher: UnitFetcher | None = None
    session: aiohttp.ClientSession | None = None
    stopped: HarvesterError | None = None  # why it stopped; None while it runs
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        """The account's name."""
        return self.account.name

    def stop(self, reason: HarvesterError) -> bool:
        """Stop the account (the first reason is kept); True the first time."""
        if self.stopped is not None:
            return False
        self.stopped = reason
        log.error("account %s stopped: %s; the other accounts go on", self.name, reason)
        return True

    def soonest(self) -> float:
        """The scheduler's key: a stopped lane first (its units need no call), then the one
        whose budget admits a call soonest."""
        if self.stopped is not None:
            return -math.inf
        return self.pacer.admits_at()


def load_account_credentials(job: Job, env: Mapping[str, str]) -> dict[str, Credentials]:
    """Every account's key and secret; one JobError naming every variable missing."""
    result: dict[str, Credentials] = {}
    problems: list[Problem] = []
    for account in accounts_of(job):
        try:
            result[account.name] = load_credentials(account.api, env)
        except JobError as exc:
            problems.extend(exc.problems)
    if problems:
        raise JobError(problems)
    return result


async def open_lanes(
    job: Job,
    endpoints: Mapping[str, tuple[str, Credentials]],
    clock: Clock,
    token: StopToken,
    breaker: CircuitBreaker | None = None,
) -> list[Lane]:
    """A lane per account, its budget opened (BudgetUnavailable, exit 2, if it cannot be).

    ``breaker``: the run's circuit breaker for a one-account job; each account of a job with
    ``accounts`` gets its own, so that one account's API going down stops that account only.
    """
    lanes: list[Lane] = []
    try:
        for account in accounts_of(job):
            base_url, credentials = endpoints[account.name]
            pacer = await open_budget(
                account.api.rate_limits,
                base_url=base_url,
                key=credentials.key,
                timeout_seconds=account.api.timeout_seconds,
                rate_budget=account.api.rate_budget,
                clock=clock.monotonic,
                sleep=token.sleep,
            )
            lane_breaker = breaker or CircuitBreaker(
                job.retry.circuit_breaker_seconds, clock=clock.monotonic
            )
            lanes.append(Lane(account, base_url, credentials, pacer, lane_breaker))
    except BaseException:
        await close_lanes(lanes)
        raise
    return lanes


def start_lane(lane: Lane, job: Job, clock: Clock, token: StopToken) -> None:
    """Open the lane's paced session and its fetcher."""
    lane.session = make_session(
        lane.pacer, timeout_seconds=lane.account.api.timeout_seconds, concurrency=job.concurrency
    )
    client = StatsClient(
        lane.session,
        lane.base_url,
        lane.credentials,
        page_stats=job.page_stats,
        now=clock.now,
    )
    lane.fetcher = UnitFetcher(
        client,
        lane.pacer,
        build_retrying(job.retry, lane.breaker, sleep=token.sleep),
        lane.breaker,
        max_attempts=job.retry.attempts,
    )


async def close_lanes(lanes: Sequence[Lane]) -> None:
    """Close every lane's session and budget."""
    for lane in lanes:
        if lane.session is not None:
            await lane.session.close()
        await lane.pacer.aclose()


def report_accounts(report: RunReport, lanes: Sequence[Lane]) -> None:
    """The lanes' counters, summed into the report, and broken down by account."""
    pacers = [lane.pacer for lane in lanes]
    stats = [lane.fetcher.stats for lane in lanes if lane.fetcher is not None]
    report.requests = sum(p.calls for p in pacers)
    report.rate_limit_waits = sum(p.waits for p in pacers)
    report.rate_limit_wait_seconds = round(sum(p.waited_seconds for p in pacers), 3)
    report.rate_limit_held_seconds = round(sum(p.held_seconds for p in pacers), 3)
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
        "rate_limit_answers": stats.rate_limit_answers if stats is not None else 0,
        "answers_by_code": dict(sorted(stats.answers.items())) if stats is not None else {},
        "stopped_by": type(lane.stopped).__name__ if lane.stopped else None,
        "message": str(lane.stopped) if lane.stopped else None,
    }
