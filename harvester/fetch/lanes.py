"""The accounts of a run: each with its credentials, budget, circuit breaker, session, fetcher.

A job without ``accounts`` has one account, ``default``, and runs exactly as before: a rejected
key or an API down too long stops the run. With several accounts, each :class:`Lane` stops
alone: its rejected credentials (41/44) or its API down too long fail its units left with that
reason (the next run fetches them again), and the other accounts go on.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from harvester.errors import HarvesterError, JobError, Problem
from harvester.fetch.client import StatsClient
from harvester.fetch.fetcher import UnitFetcher
from harvester.fetch.pool import StopToken
from harvester.fetch.retry import CircuitBreaker, build_retrying
from harvester.fetch.session import make_session
from harvester.job.credentials import Credentials, load_credentials
from harvester.job.model import Account, Job, accounts_of
from harvester.model import Clock
from harvester.pacing.protocol import Pacer
from harvester.pacing.shared import open_budget

__all__ = [
    "Lane",
    "close_lanes",
    "load_account_credentials",
    "open_lanes",
]

log = logging.getLogger("harvester")


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
                shared=not account.api.uses_simulator,  # a simulator of this process alone
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
        timeout_seconds=lane.account.api.timeout_seconds,
        max_answer_bytes=lane.account.api.max_answer_bytes,
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
