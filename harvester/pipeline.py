"""The harvest, wired: job → plan → pool(fetch) → commit (state + Parquet) → report.

:func:`harvest` is the library's entry point; the CLI only parses arguments, calls it and maps
errors to exit codes. It takes the output's lock, recovers what a killed run left staged,
fetches the units the state does not hold as done, commits partitions as they complete, stops
gracefully on SIGINT/SIGTERM, and writes the run report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiohttp

from harvester.api import StatsClient, paced
from harvester.commit import Committer, PartitionTracker, Quarantine, pending_units
from harvester.config import Credentials, Job, load_credentials
from harvester.errors import (
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNITS_FAILED,
    CircuitOpen,
    CredentialsRejected,
    UnitError,
)
from harvester.fetch import UnitFetcher
from harvester.plan import Unit, count_units, iter_windows
from harvester.pool import Stopped, StopToken, WorkerPool
from harvester.ratelimit import RateLimiter
from harvester.redact import register_secrets
from harvester.report import RunReport, report_dict, write_report
from harvester.retry import CircuitBreaker, build_retrying
from harvester.sink import COLLECTION_STATS, PAGE_STATS, ParquetSink
from harvester.state import OutputLock, StateStore, default_state_path

__all__ = ["RunOptions", "harvest", "plan_pending"]

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
                await _fetch_all(job, options, store, sink, report, quarantine, base_url, creds)
        except (CredentialsRejected, CircuitOpen) as exc:
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
    report.units_not_attempted = max(
        0, report.units_to_fetch - report.units_fetched - report.units_failed
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


async def _fetch_all(
    job: Job,
    options: RunOptions,
    store: StateStore,
    sink: ParquetSink,
    report: RunReport,
    quarantine: Quarantine,
    base_url: str,
    credentials: Credentials,
) -> None:
    """Recover staged answers, fetch every pending unit, commit, honour signals."""
    token = StopToken()
    tracker, ready = PartitionTracker(), list[date]()
    committer = Committer(store, sink, tracker, report, quarantine, ready)
    report.units_recovered = await committer.flush_all()
    if report.units_recovered:
        log.info(
            "recovered %d fetched units an interrupted run had not written", report.units_recovered
        )
    units = pending_units(
        iter_windows(job),
        store,
        tracker,
        report,
        refresh_from=_refresh_from(job, options),
        ready=ready,
    )
    limiter = RateLimiter(job.api.rate_limits, sleep=token.sleep)
    breaker = CircuitBreaker(job.retry.circuit_breaker_seconds)
    pool: WorkerPool[Unit] = WorkerPool(job.concurrency, token)
    seconds = job.api.timeout_seconds
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
    connector = aiohttp.TCPConnector(limit=job.concurrency, limit_per_host=job.concurrency)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, middlewares=[paced(limiter, seconds)]
    ) as session:
        client = StatsClient(session, base_url, credentials, page_stats=job.page_stats)
        retrying = build_retrying(job.retry, breaker, sleep=token.sleep)
        fetcher = UnitFetcher(client, limiter, retrying, breaker, max_attempts=job.retry.attempts)

        async def work(unit: Unit) -> None:
            try:
                committer.put(await fetcher.fetch(unit))
            except (Stopped, asyncio.CancelledError):
                committer.put(unit)
                raise_if_cancelled()
            except CircuitOpen as exc:
                if isinstance(exc.__cause__, UnitError):
                    committer.put(exc.__cause__)
                token.set("circuit breaker")
                raise
            except CredentialsRejected:
                committer.put(unit)
                token.set("credentials")
                raise
            except UnitError as exc:
                committer.put(exc)

        writer = asyncio.create_task(committer.run())
        writer.add_done_callback(lambda task: _writer_done(task, token, pool))
        progress = asyncio.create_task(_log_progress(report, fetcher, limiter))
        loop = asyncio.get_running_loop()
        for signum in SIGNAL_EXIT:
            loop.add_signal_handler(signum, _on_signal, signum, token, pool, report, options)
        log.info(
            "%s: %d units in the job; fetching those not yet done (concurrency %d)",
            job.source,
            report.units_in_job,
            job.concurrency,
        )
        try:
            await pool.run(units, work)
        finally:
            for signum in SIGNAL_EXIT:
                loop.remove_signal_handler(signum)
            progress.cancel()
            committer.close()
            await writer  # the writer never runs two commits at once: wait, don't cancel
            if token.reason != "second signal":
                await committer.flush_all()
            _copy_fetch_stats(report, fetcher, limiter)
    if token.reason in ("SIGINT", "SIGTERM", "second signal"):
        log.warning("stopped by a signal; fetched units are committed; rerun the job to resume")


def _writer_done(task: asyncio.Task[None], token: StopToken, pool: WorkerPool[Unit]) -> None:
    """If the writer died (disk full, say), stop fetching what could not be kept."""
    if not task.cancelled() and task.exception() is not None:
        token.set("writer failed")
        pool.cancel()


def raise_if_cancelled() -> None:
    """Re-raise a cancellation after recording the abandoned unit (a hard stop)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _on_signal(
    signum: signal.Signals,
    token: StopToken,
    pool: WorkerPool[Unit],
    report: RunReport,
    options: RunOptions,
) -> None:
    """First signal: stop handing out units, let in-flight requests finish; second: stop now."""
    name = signal.Signals(signum).name
    if token.is_set:
        log.warning("%s again: stopping now; what was fetched is staged and kept", name)
        report.stopped_by = report.stopped_by or name
        token.reason = "second signal"
        pool.cancel()
        return
    log.warning(
        "%s: finishing %d in-flight requests (at most %.0f s), then committing",
        name,
        pool.in_flight,
        options.grace_seconds,
    )
    report.stopped_by = name
    report.exit_code = SIGNAL_EXIT[signum]
    token.set(name)
    asyncio.get_running_loop().call_later(options.grace_seconds, pool.cancel)


def _copy_fetch_stats(report: RunReport, fetcher: UnitFetcher, limiter: RateLimiter) -> None:
    stats = fetcher.stats
    report.requests = limiter.calls
    report.retries = stats.retries
    report.errors_by_kind = dict(stats.errors)
    report.rate_limit_answers = stats.rate_limit_answers
    report.rate_limit_waits = limiter.waits
    report.rate_limit_wait_seconds = round(limiter.waited_seconds, 3)
    report.rate_limit_pauses = limiter.pauses


async def _log_progress(report: RunReport, fetcher: UnitFetcher, limiter: RateLimiter) -> None:
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
