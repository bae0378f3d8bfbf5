"""The harvest, wired: job → plan → pool(fetch) → commit (state + Parquet) → report.

:func:`harvest` is the library's entry point; the CLI only parses arguments, calls it and maps
errors to exit codes. It takes the output's lock, recovers what a killed run left staged,
fetches the units the state does not hold as done, commits partitions as they complete, stops
gracefully on SIGINT/SIGTERM, and writes the run report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiohttp

from harvester.api import StatsClient, make_session
from harvester.commit import Committer, PartitionTracker, Quarantine, pending_units
from harvester.config import Credentials, Job, load_credentials, with_discovered
from harvester.errors import (
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNITS_FAILED,
    CircuitOpen,
    CredentialsRejected,
    DiscoveryFailed,
    UnitError,
)
from harvester.fetch import UnitFetcher
from harvester.model import Unit
from harvester.plan import count_units, iter_windows
from harvester.pool import Stopped, StopToken, WorkerPool
from harvester.ratelimit import RateLimiter
from harvester.redact import register_secrets
from harvester.report import RunReport, report_dict, write_report
from harvester.retry import CircuitBreaker, build_retrying
from harvester.sink import COLLECTION_STATS, PAGE_STATS, ParquetSink
from harvester.state import OutputLock, StateStore, default_state_path

__all__ = ["RunOptions", "harvest", "plan_pending", "status"]

log = logging.getLogger("harvester")

DEFAULT_GRACE_SECONDS = 10.0
PROGRESS_EVERY_SECONDS = 30.0
SIGNAL_EXIT = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}


@dataclass(frozen=True)
class RunOptions:
    """How to run a job, beyond what the job file says."""

    state_path: Path | None = None
    refresh: bool = False
    wait_for_lock: bool = False
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    today: date | None = None


def _state_path(job: Job, options: RunOptions) -> Path:
    return options.state_path or default_state_path(job.output)


def _refresh_from(job: Job, options: RunOptions) -> date | None:
    """Done units ending on or after this date are fetched again (None: none are)."""
    if options.refresh:
        return date.min
    if job.refresh_days > 0:
        today = options.today or datetime.now(UTC).date()
        return today - timedelta(days=job.refresh_days)
    return None


def plan_pending(job: Job, options: RunOptions) -> tuple[int, int]:
    """Dry run: (units in the job, units a run would fetch now); no request, nothing written."""
    total = count_units(job)
    path = _state_path(job, options)
    if not path.exists():
        return total, total
    report = RunReport("dry-run", str(job.source), str(job.output), str(path), "")
    with StateStore(path) as store:
        pending = pending_units(
            iter_windows(job),
            store,
            PartitionTracker(),
            report,
            refresh_from=_refresh_from(job, options),
            ready=[],
        )
        for _ in pending:
            pass
    return total, report.units_to_fetch


def status(job: Job, options: RunOptions, *, limit: int = 20) -> str:
    """What the state says of a job's output: counts, failed units, the last run; read only."""
    path = _state_path(job, options)
    if not path.exists():
        return f"{job.output}: no state yet ({path}): nothing was harvested here"
    with StateStore(path) as store:
        counts, failed = store.counts(), store.failed()
    lines = [
        f"{job.output}: {counts['done']} units done, {counts['failed']} failed, "
        f"{counts['staged']} fetched but not yet written (the next run writes them)"
    ]
    lines += [
        f"failed: {f.unit}: {f.reason} ({f.kind}, {f.attempts} attempts, {f.failed_at})"
        for f in failed[:limit]
    ]
    if len(failed) > limit:
        lines.append(f"... and {len(failed) - limit} more failed units")
    if failed:
        lines.append("the next run retries every failed unit")
    last = path.parent / "last-run.json"
    if last.exists():
        report = json.loads(last.read_text(encoding="utf-8"))
        lines.append(
            f"last run: {report.get('outcome')} at {report.get('finished_at')}, "
            f"exit {report.get('exit_code')} (report: {last})"
        )
    return "\n".join(lines)


def harvest(job: Job, options: RunOptions, env: Mapping[str, str] | None = None) -> RunReport:
    """Run a job to the end (or to a stop); return its report. Raises HarvesterError."""
    credentials = None
    if not job.api.uses_simulator:
        credentials = load_credentials(job.api, os.environ if env is None else env)
        register_secrets([credentials.key, credentials.secret])
    state_path = _state_path(job, options)
    lock = OutputLock(job.output)
    lock.acquire(wait=options.wait_for_lock)
    try:
        return asyncio.run(_run(job, options, credentials, state_path))
    finally:
        lock.release()


@contextlib.asynccontextmanager
async def _endpoint(
    job: Job, credentials: Credentials | None
) -> AsyncIterator[tuple[str, Credentials]]:
    """The API to talk to: the job's, or the bundled simulator started in-process."""
    if credentials is not None:
        yield job.api.base_url, credentials
        return
    from harvester.simulator import Simulator, SimulatorConfig

    config = SimulatorConfig(rate_limits=job.api.rate_limits, latency=(0.002, 0.02))
    simulator = Simulator(config)
    base_url = await simulator.start()
    key, secret = next(iter(config.keys.items()))
    register_secrets([key, secret])
    log.info("using the bundled simulator at %s", base_url)
    try:
        yield base_url, Credentials(key, secret)
    finally:
        await simulator.stop()


def _new_report(job: Job, state_path: Path) -> RunReport:
    now = datetime.now(UTC)
    return RunReport(
        run_id=now.strftime("%Y%m%dT%H%M%S%fZ"),
        job=str(job.source),
        output=str(job.output),
        state=str(state_path),
        started_at=now.isoformat(timespec="seconds"),
        datasets=[str(job.output / PAGE_STATS), str(job.output / COLLECTION_STATS)],
    )


async def _run(
    job: Job, options: RunOptions, credentials: Credentials | None, state_path: Path
) -> RunReport:
    """The asynchronous part of :func:`harvest`."""
    started = time.monotonic()
    report = _new_report(job, state_path)
    report.units_in_job = count_units(job)
    quarantine = Quarantine(state_path.parent / "quarantine" / f"run-{report.run_id}.jsonl")
    sink = ParquetSink(job.output)
    removed = sink.cleanup()
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    with StateStore(state_path) as store:
        try:
            async with _endpoint(job, credentials) as (base_url, creds):
                run = _Harvest(job, options, store, sink, report, quarantine)
                await run.run(base_url, creds)
        except (CredentialsRejected, CircuitOpen, DiscoveryFailed) as exc:
            report.stopped_by = type(exc).__name__
            report.message = str(exc)
            report.exit_code = exc.exit_code
        report.quarantined = quarantine.count
        report.quarantine_file = str(quarantine.path) if quarantine.count else None
        _finish(report, started)
        store.record_run(report_dict(report))
    write_report(report, state_path.parent)
    return report


def _finish(report: RunReport, started: float) -> None:
    """Fill in the closing numbers, the exit code and the one-word outcome."""
    report.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    report.elapsed_seconds = round(time.monotonic() - started, 3)
    # The plan is read lazily: after an early stop, units it never reached count here too
    # (an upper bound then: some of them may have been done by an earlier run).
    report.units_not_attempted = max(
        0,
        report.units_in_job
        - report.units_already_done
        - report.units_fetched
        - report.units_failed,
    )
    if report.exit_code == EXIT_OK and report.units_failed:
        report.exit_code = EXIT_UNITS_FAILED
    if report.stopped_by in ("SIGINT", "SIGTERM"):
        report.outcome = f"stopped by {report.stopped_by}"
    elif report.stopped_by:
        report.outcome = "stopped"
    elif report.units_to_fetch == 0:
        report.outcome = "nothing to do"
        report.message = report.message or "every unit of the job is already done: 0 requests made"
    else:
        report.outcome = "finished" if report.exit_code == EXIT_OK else "finished with failures"


class _Harvest:
    """One run's moving parts, wired: limiter, breaker, pool, fetcher, committer, signals."""

    def __init__(
        self,
        job: Job,
        options: RunOptions,
        store: StateStore,
        sink: ParquetSink,
        report: RunReport,
        quarantine: Quarantine,
    ) -> None:
        self.job, self.options, self.store, self.report = job, options, store, report
        self.token = StopToken()
        self.tracker = PartitionTracker()
        self.ready: list[date] = []
        self.committer = Committer(store, sink, self.tracker, report, quarantine, self.ready)
        self.limiter = RateLimiter(job.api.rate_limits, sleep=self.token.sleep)
        self.breaker = CircuitBreaker(job.retry.circuit_breaker_seconds)
        self.pool: WorkerPool[Unit] = WorkerPool(job.concurrency, self.token)
        self.retrying = build_retrying(job.retry, self.breaker, sleep=self.token.sleep)

    async def run(self, base_url: str, credentials: Credentials) -> None:
        """Recover staged answers, discover collections, fetch every pending unit, commit."""
        recovered = await self.committer.flush_all()
        self.report.units_recovered = recovered
        if recovered:
            log.info("recovered %d fetched units an interrupted run had not written", recovered)
        async with self._session() as session:
            client = StatsClient(session, base_url, credentials, page_stats=self.job.page_stats)
            fetcher = UnitFetcher(
                client,
                self.limiter,
                self.retrying,
                self.breaker,
                max_attempts=self.job.retry.attempts,
            )
            try:
                job = await self._discover(fetcher)
                await self._fetch(job, fetcher)
            finally:
                _copy_fetch_stats(self.report, fetcher, self.limiter)

    def _session(self) -> aiohttp.ClientSession:
        """One pooled session; every send paced and counted from when it goes out."""
        return make_session(
            self.limiter,
            timeout_seconds=self.job.api.timeout_seconds,
            concurrency=self.job.concurrency,
        )

    async def _discover(self, fetcher: UnitFetcher) -> Job:
        """The job with the account's collections added, when it asks for discovery."""
        discovery = self.job.discover
        if discovery is None:
            return self.job
        try:
            hashes = await fetcher.discover(discovery)
        except UnitError as exc:
            raise DiscoveryFailed(f"{exc.reason} ({exc.kind}, {exc.attempts} attempts)") from exc
        job = with_discovered(self.job, hashes)
        added = len(job.collections) - len(self.job.collections)
        log.info("discovered %d collections (%d not listed in the job)", len(hashes), added)
        self.report.units_in_job = count_units(job)
        return job

    async def _fetch(self, job: Job, fetcher: UnitFetcher) -> None:
        """Run the pool over the pending units with the writer beside it; honour signals."""
        units = pending_units(
            iter_windows(job),
            self.store,
            self.tracker,
            self.report,
            refresh_from=_refresh_from(job, self.options),
            ready=self.ready,
        )
        writer = asyncio.create_task(self.committer.run())
        writer.add_done_callback(self._writer_done)
        progress = asyncio.create_task(_log_progress(self.report, self.limiter))
        loop = asyncio.get_running_loop()
        for signum in SIGNAL_EXIT:
            loop.add_signal_handler(signum, self._on_signal, signum)
        log.info(
            "%s: %d units in the job; fetching those not yet done (concurrency %d)",
            job.source,
            self.report.units_in_job,
            job.concurrency,
        )
        try:
            await self.pool.run(units, lambda unit: self._work(fetcher, unit))
        finally:
            progress.cancel()
            self.committer.close()
            await writer  # the writer never runs two commits at once: wait, don't cancel
            if self.token.reason != "second signal":
                await self.committer.flush_all()
            for signum in SIGNAL_EXIT:
                loop.remove_signal_handler(signum)
        if self.token.reason in ("SIGINT", "SIGTERM", "second signal"):
            log.warning("stopped by a signal; fetched units are committed; rerun to resume")

    async def _work(self, fetcher: UnitFetcher, unit: Unit) -> None:
        """One unit, fetched; its outcome handed to the writer, whatever it is."""
        try:
            self.committer.put(await fetcher.fetch(unit))
        except (Stopped, asyncio.CancelledError):
            self.committer.put(unit)  # abandoned: the next run fetches it
            _raise_if_cancelled()
        except CircuitOpen as exc:
            if isinstance(exc.__cause__, UnitError):
                self.committer.put(exc.__cause__)
            self.token.set("circuit breaker")
            raise
        except CredentialsRejected:
            self.committer.put(unit)
            self.token.set("credentials")
            raise
        except UnitError as exc:
            self.committer.put(exc)

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """If the writer died (disk full, say), stop fetching what could not be kept."""
        if not task.cancelled() and task.exception() is not None:
            self.token.set("writer failed")
            self.pool.cancel()

    def _on_signal(self, signum: signal.Signals) -> None:
        """First signal: stop handing out units, let in-flight requests finish; second: now."""
        name = signal.Signals(signum).name
        report = self.report
        if self.token.is_set:
            log.warning("%s again: stopping now; what was fetched is staged and kept", name)
            report.stopped_by = report.stopped_by or name
            self.token.reason = "second signal"
            self.pool.cancel()
            return
        grace = self.options.grace_seconds
        log.warning(
            "%s: finishing %d in-flight requests (at most %.0f s), then committing",
            name,
            self.pool.in_flight,
            grace,
        )
        report.stopped_by = name
        report.exit_code = SIGNAL_EXIT[signum]
        self.token.set(name)
        asyncio.get_running_loop().call_later(grace, self.pool.cancel)


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation after recording the abandoned unit (a hard stop)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _copy_fetch_stats(report: RunReport, fetcher: UnitFetcher, limiter: RateLimiter) -> None:
    """The fetcher's and the limiter's counters, into the report."""
    stats = fetcher.stats
    report.requests = limiter.calls
    report.retries = stats.retries
    report.errors_by_kind = dict(stats.errors)
    report.rate_limit_answers = stats.rate_limit_answers
    report.rate_limit_waits = limiter.waits
    report.rate_limit_wait_seconds = round(limiter.waited_seconds, 3)
    report.rate_limit_held_seconds = round(limiter.held_seconds, 3)
    report.rate_limit_pauses = limiter.pauses


async def _log_progress(report: RunReport, limiter: RateLimiter) -> None:
    """Every half minute, one line a tail -f or a log aggregator can follow."""
    last = 0
    while True:
        await asyncio.sleep(PROGRESS_EVERY_SECONDS)
        done = report.units_fetched + report.units_failed
        rate = (done - last) / PROGRESS_EVERY_SECONDS
        last = done
        log.info(
            "progress: %d fetched, %d failed, %d committed; %.2f units/s; %d requests, "
            "%.0f s waiting on the rate limit",
            report.units_fetched,
            report.units_failed,
            report.units_committed,
            rate,
            limiter.calls,
            limiter.waited_seconds,
        )
