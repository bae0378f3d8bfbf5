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
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import aiohttp

from harvester.api import StatsClient, make_session
from harvester.commit import Committer, Gone, Ledger, Quarantine, Rules
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
from harvester.model import Clock, Unit, system_clock
from harvester.objlock import ObjectLock, output_lock
from harvester.output import bind_output, check_output
from harvester.plan import count_units, iter_windows
from harvester.pool import Stopped, StopToken, WorkerPool
from harvester.ratelimit import RateLimiter
from harvester.record import DatasetView, job_window
from harvester.redact import register_secrets
from harvester.report import RunReport, report_dict, write_report
from harvester.retry import CircuitBreaker, build_retrying
from harvester.sink import COLLECTION_STATS, PAGE_STATS, ParquetSink
from harvester.state import StateStore, default_state_path
from harvester.storage import check_reachable, open_sink, publish_report, storage_errors

__all__ = ["RunOptions", "harvest", "rules_of", "state_path_of"]

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
    today: date | None = None  # UTC; default: the clock's date, read once per run
    clock: Clock | None = None  # wall time, monotonic time and sleep; default: the real ones
    retry_gone: bool = False  # fetch collections recorded as gone (43/46) again


def state_path_of(job: Job, options: RunOptions) -> Path:
    """The state database a run of ``job`` uses."""
    return options.state_path or default_state_path(job.output)


def rules_of(job: Job, options: RunOptions, today: date) -> Rules:
    """The plan filter's rules for one run."""
    refresh_from = None
    if options.refresh:
        refresh_from = date.min
    elif job.refresh_days > 0:
        refresh_from = today - timedelta(days=job.refresh_days)
    return Rules(today, job.page_stats, refresh_from, options.retry_gone)


def harvest(job: Job, options: RunOptions, env: Mapping[str, str] | None = None) -> RunReport:
    """Run a job to the end (or to a stop); return its report. Raises HarvesterError."""
    credentials = None
    if not job.api.uses_simulator:
        credentials = load_credentials(job.api, os.environ if env is None else env)
        register_secrets([credentials.key, credentials.secret])
    state_path = state_path_of(job, options)
    check_reachable(job.output, str(job.source))  # a missing bucket: exit 2, nothing requested
    check_output(job, state_path)  # before anything is locked or written
    lock = output_lock(job.output, state_path.parent)
    lock.acquire(wait=options.wait_for_lock)
    try:
        with storage_errors(job.output):
            guard = lock.check if isinstance(lock, ObjectLock) else None
            return asyncio.run(_run(job, options, credentials, state_path, guard))
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


async def _run(
    job: Job,
    options: RunOptions,
    credentials: Credentials | None,
    state_path: Path,
    guard: Callable[[], None] | None = None,
) -> RunReport:
    """The asynchronous part of :func:`harvest`."""
    clock = options.clock or system_clock()
    started = clock.monotonic()
    now = clock.now()
    today = options.today or clock.today()
    report = RunReport(
        run_id=now.strftime("%Y%m%dT%H%M%S%fZ"),
        job=str(job.source),
        output=str(job.output),
        state=str(state_path),
        started_at=now.isoformat(timespec="seconds"),
        today=today.isoformat(),
        datasets=[str(job.output / PAGE_STATS), str(job.output / COLLECTION_STATS)],
    )
    report.units_in_job = count_units(job)
    quarantine = Quarantine(state_path.parent / "quarantine" / f"run-{report.run_id}.jsonl")
    sink = open_sink(job.output, job.format)
    if guard is not None:
        sink.guard = guard  # a lease lost to another run: stop writing at once
    removed = sink.cleanup()
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    with StateStore(state_path, clock=clock.now, granularity=job.granularity) as store:
        bind_output(job, store, sink, now=now)
        run = _Harvest(job, options, store, sink, quarantine, clock, rules_of(job, options, today))
        try:
            async with _endpoint(job, credentials) as (base_url, creds):
                await run.run(base_url, creds)
        except (CredentialsRejected, CircuitOpen, DiscoveryFailed) as exc:
            report.stopped_by = type(exc).__name__
            report.message = str(exc)
            report.exit_code = exc.exit_code
        finally:
            run.fill(report)
        report.quarantined = quarantine.count
        report.quarantine_file = str(quarantine.path) if quarantine.count else None
        _finish(report, clock, started)
        store.record_run(report_dict(report))
    write_report(report, state_path.parent)
    publish_report(job.output, state_path.parent, report.run_id, report.to_json() + "\n")
    return report


def _finish(report: RunReport, clock: Clock, started: float) -> None:
    """Fill in the closing numbers, the exit code and the one-word outcome."""
    report.finished_at = clock.now().isoformat(timespec="seconds")
    report.elapsed_seconds = round(clock.monotonic() - started, 3)
    if report.exit_code == EXIT_OK and report.failed:
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
    """One run's moving parts, wired: limiter, breaker, pool, fetcher, ledger, committer."""

    def __init__(
        self,
        job: Job,
        options: RunOptions,
        store: StateStore,
        sink: ParquetSink,
        quarantine: Quarantine,
        clock: Clock,
        rules: Rules,
    ) -> None:
        self.job, self.options, self.store = job, options, store
        self.token = StopToken(sleep=clock.sleep)
        # Collections the API said are gone: the ledger skips them, workers too, mid-run.
        self.gone = store.gone_collections() if not rules.retry_gone else set()
        # What is done: the state, checked against the dataset's files (see harvester.record).
        view = DatasetView(store, sink, job_window(job), write=True)
        self.ledger = Ledger(view, rules, self.gone)
        self.committer = Committer(store, sink, self.ledger, quarantine, rules, self.gone)
        self.limiter = RateLimiter(
            job.api.rate_limits, clock=clock.monotonic, sleep=self.token.sleep
        )
        self.breaker = CircuitBreaker(job.retry.circuit_breaker_seconds, clock=clock.monotonic)
        self.pool: WorkerPool[Unit] = WorkerPool(job.concurrency, self.token)
        self.retrying = build_retrying(job.retry, self.breaker, sleep=self.token.sleep)
        self.clock = clock
        self.units_in_job = count_units(job)
        self.stopped_by: str | None = None
        self.exit_code = EXIT_OK
        self.fetcher: UnitFetcher | None = None

    async def run(self, base_url: str, credentials: Credentials) -> None:
        """Recover staged answers, discover collections, fetch every pending unit, commit."""
        recovered = await self.committer.flush_all(recovery=True)
        if recovered:
            log.info("wrote %d fetched units an interrupted run had not written", recovered)
        async with self._session() as session:
            client = StatsClient(
                session,
                base_url,
                credentials,
                page_stats=self.job.page_stats,
                now=self.clock.now,
            )
            self.fetcher = UnitFetcher(
                client,
                self.limiter,
                self.retrying,
                self.breaker,
                max_attempts=self.job.retry.attempts,
            )
            job = await self._discover(self.fetcher)
            await self._fetch(job, self.fetcher)

    def fill(self, report: RunReport) -> None:
        """Put every stage's counts into the report: the one place the report is written."""
        plan, done = self.ledger.counts, self.committer.counts
        report.units_in_job = self.units_in_job
        report.units_already_done = plan.already_done
        report.units_to_fetch = plan.to_fetch
        report.units_provisional = plan.provisional
        report.units_changed = plan.changed
        report.units_not_begun = plan.not_begun
        report.units_fetched = done.fetched
        report.units_committed = done.committed
        report.units_recovered = done.recovered
        report.units_failed = done.failed
        report.units_gone = plan.gone + done.gone
        report.failed = list(done.failures)
        # The plan is read to its end even after a stop (without fetching), so this is exact.
        report.units_not_attempted = max(
            0,
            report.units_in_job
            - plan.already_done
            - plan.not_begun
            - report.units_gone
            - done.fetched
            - done.failed,
        )
        report.page_rows_written = done.page_rows
        report.collection_rows_written = done.collection_rows
        report.files_written = done.files
        report.partitions_written = done.partitions
        if self.stopped_by is not None:
            report.stopped_by = report.stopped_by or self.stopped_by
        if report.exit_code == EXIT_OK:
            report.exit_code = self.exit_code
        if self.fetcher is not None:
            _copy_fetch_stats(report, self.fetcher, self.limiter)

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
        self.units_in_job = count_units(job)
        return job

    async def _fetch(self, job: Job, fetcher: UnitFetcher) -> None:
        """Run the pool over the pending units with the writer beside it; honour signals."""
        units = self.ledger.pending(iter_windows(job))
        writer = asyncio.create_task(self.committer.run())
        writer.add_done_callback(self._writer_done)
        progress = asyncio.create_task(self._log_progress())
        loop = asyncio.get_running_loop()
        for signum in SIGNAL_EXIT:
            loop.add_signal_handler(signum, self._on_signal, signum)
        log.info(
            "%s: %d units in the job; fetching those not yet done (concurrency %d)",
            job.source,
            self.units_in_job,
            job.concurrency,
        )
        try:
            await self.pool.run(units, lambda unit: self._work(fetcher, unit))
        finally:
            progress.cancel()
            self.committer.close()
            await writer  # the writer never runs two commits at once: wait, don't cancel
            hard_stop = self.token.reason == "second signal"
            if not hard_stop:
                await self.committer.flush_all()
                for _ in units:  # count what the stop left, without fetching it
                    pass
            for signum in SIGNAL_EXIT:
                loop.remove_signal_handler(signum)
        if self.token.reason in ("SIGINT", "SIGTERM", "second signal"):
            log.warning("stopped by a signal; fetched units are committed; rerun to resume")

    async def _work(self, fetcher: UnitFetcher, unit: Unit) -> None:
        """One unit, fetched; its outcome handed to the writer, whatever it is."""
        if unit.collection_hash in self.gone:
            self.committer.put(Gone(unit))  # learnt mid-run: no call for the rest of it
            return
        try:
            self.committer.put(await fetcher.fetch(unit))
        except (Stopped, asyncio.CancelledError):
            self.committer.put(unit)  # abandoned: the next run fetches it
            _raise_if_cancelled()
        except CircuitOpen as exc:
            if isinstance(exc.__cause__, UnitError):
                self.committer.put(exc.__cause__)
            else:
                self.committer.put(unit)
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
        if self.token.is_set:
            log.warning("%s again: stopping now; what was fetched is staged and kept", name)
            self.stopped_by = self.stopped_by or name
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
        self.stopped_by = name
        self.exit_code = SIGNAL_EXIT[signum]
        self.token.set(name)
        asyncio.get_running_loop().call_later(grace, self.pool.cancel)

    async def _log_progress(self) -> None:
        """Every half minute, one line a tail -f or a log aggregator can follow."""
        last = 0
        plan, done = self.ledger.counts, self.committer.counts
        while True:
            await asyncio.sleep(PROGRESS_EVERY_SECONDS)
            resolved = done.fetched + done.failed + done.gone
            rate = (resolved - last) / PROGRESS_EVERY_SECONDS
            last = resolved
            log.info(
                "progress: %d of %d to fetch done (%d failed), %d committed; %.2f units/s;"
                " %d requests",
                resolved,
                plan.to_fetch,
                done.failed,
                done.committed,
                rate,
                self.limiter.calls,
            )


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
    report.answers_by_code = dict(sorted(stats.answers.items()))
    report.rate_limit_answers = stats.rate_limit_answers
    report.rate_limit_waits = limiter.waits
    report.rate_limit_wait_seconds = round(limiter.waited_seconds, 3)
    report.rate_limit_held_seconds = round(limiter.held_seconds, 3)
    report.rate_limit_pauses = limiter.pauses
