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
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path

from harvester.errors import (
    EXIT_CREDENTIALS,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNITS_FAILED,
    BudgetUnavailable,
    CircuitOpen,
    CredentialsRejected,
    DiscoveryFailed,
    HarvesterError,
    LockedError,
    NotFetched,
    StorageError,
    UnitError,
)
from harvester.fetch.lanes import (
    Lane,
    close_lanes,
    load_account_credentials,
    open_lanes,
    start_lane,
)
from harvester.fetch.pool import Stopped, StopToken, WorkerPool
from harvester.fetch.retry import CircuitBreaker
from harvester.job.credentials import Credentials
from harvester.job.model import Job, account_discovered, accounts_of
from harvester.lake.fs import check_reachable, open_sink, publish_report, storage_errors
from harvester.lake.lock import OutputLock
from harvester.lake.objlock import ObjectLock, output_lock
from harvester.lake.output import write_discovered
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from harvester.layout import QUARANTINE_DIR
from harvester.model import Clock, Unit, system_clock
from harvester.pacing.limiter import HoldMeter, WindowUse
from harvester.pacing.protocol import budget_digest
from harvester.plan.schedule import Scheduler, Splitter
from harvester.plan.windows import count_units, iter_windows
from harvester.redact import register_secrets
from harvester.run.commit import Committer, Gone, Ledger, Quarantine, Rules
from harvester.run.options import PROGRESS_EVERY_SECONDS, RunOptions, rules_of, state_path_of
from harvester.run.progress import Progress, Snapshot, least_seconds
from harvester.run.report import RunReport, report_accounts, report_dict, write_report
from harvester.state.binding import bind_output, check_output, discard_vanished
from harvester.state.record import DatasetView, job_window
from harvester.state.store import StateStore

__all__ = ["RunOptions", "harvest", "harvest_async", "rules_of", "state_path_of"]

log = logging.getLogger("harvester")

SIGNAL_EXIT = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}
# What stops a run before it has finished its job: its units left fail with the reason.
RUN_STOPS = (CredentialsRejected, CircuitOpen, DiscoveryFailed, BudgetUnavailable)


def harvest(
    job: Job, options: RunOptions | None = None, env: Mapping[str, str] | None = None
) -> RunReport:
    """Run a job to the end (or to a stop); return its report. Raises HarvesterError.

    Works from any thread; called where an event loop is already running (a notebook, an
    async framework), it runs the harvest on a thread of its own and waits for it.
    """
    coroutine = harvest_async(job, options, env)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1, thread_name_prefix="harvester") as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def harvest_async(
    job: Job, options: RunOptions | None = None, env: Mapping[str, str] | None = None
) -> RunReport:
    """The harvest as a coroutine, for callers that run an event loop of their own."""
    options = options or RunOptions()
    credentials = None
    if not job.api.uses_simulator:
        credentials = load_account_credentials(job, os.environ if env is None else env)
        register_secrets([s for c in credentials.values() for s in (c.key, c.secret)])
    state_path = state_path_of(job, options)
    check_reachable(job.output, str(job.source))  # a missing bucket: exit 2, nothing requested
    # Before anything is locked or written.
    check_output(job, state_path, other_endpoint=options.allow_other_endpoint)
    unfenced = options.allow_unfenced or job.output.storage.allow_unfenced
    lock = output_lock(job.output, state_path.parent, allow_unfenced=unfenced)
    with storage_errors(job.output):  # the loop keeps running while the lock is taken
        await asyncio.to_thread(lock.acquire, wait=options.wait_for_lock)
    try:
        return await _run(job, options, credentials, state_path, lock)
    finally:
        await asyncio.to_thread(_release, lock)  # a last conditional write: off the loop


def _release(lock: OutputLock | ObjectLock) -> None:
    """Let the lock go; a failure is logged, never raised over what ended the run."""
    try:
        lock.release()
    except (HarvesterError, OSError) as exc:
        log.warning("could not release the output's lock: %s", exc)


@contextlib.asynccontextmanager
async def _endpoint(
    job: Job, credentials: Mapping[str, Credentials] | None
) -> AsyncIterator[dict[str, tuple[str, Credentials]]]:
    """Each account's API and credentials: the job's, or the bundled simulator started
    in-process (every account on its one key)."""
    if credentials is not None:
        yield {a.name: (a.api.base_url, credentials[a.name]) for a in accounts_of(job)}
        return
    from harvester.simulator import Simulator, SimulatorConfig

    config = SimulatorConfig(rate_limits=job.api.rate_limits, latency=(0.002, 0.02))
    simulator = Simulator(config)
    base_url = await simulator.start()
    key, secret = next(iter(config.keys.items()))
    register_secrets([key, secret])
    log.info("using the bundled simulator at %s", base_url)
    try:
        yield {a.name: (base_url, Credentials(key, secret)) for a in accounts_of(job)}
    finally:
        await simulator.stop()


async def _run(
    job: Job,
    options: RunOptions,
    credentials: Mapping[str, Credentials] | None,
    state_path: Path,
    lock: OutputLock | ObjectLock,
) -> RunReport:
    """The asynchronous part of :func:`harvest`: its report is written whatever ends it."""
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
    quarantine = Quarantine(state_path.parent / QUARANTINE_DIR / f"run-{report.run_id}.jsonl")
    sink = open_sink(
        job.output, job.format, _owners(job), catalog=job.catalog, granularity=job.granularity
    )
    failure: LockedError | StorageError | None = None
    with storage_errors(job.output):
        discard_vanished(job, state_path, sink)  # before the state is opened
    sink.quarantine_tag = report.run_id  # unreadable files moved aside are named after the run
    with StateStore(state_path, clock=clock.now, granularity=job.granularity) as store:
        run = _Harvest(job, options, store, sink, quarantine, clock, rules_of(job, options, today))
        if isinstance(lock, ObjectLock):
            sink.guard = lock.check  # right before every write: a lease lost stops it
            loop = asyncio.get_running_loop()

            def lost() -> None:  # called from the lease's thread
                loop.call_soon_threadsafe(run.stop_writing)

            lock.on_lost = lost
        try:
            with storage_errors(job.output):
                _prepare(job, store, sink, now, other_endpoint=options.allow_other_endpoint)
                async with _endpoint(job, credentials) as endpoints:
                    await run.run(endpoints)
                sink.guard()  # a lease lost while nothing was left to write is still news
        except RUN_STOPS as exc:
            _stopped(report, exc)
        except (LockedError, StorageError) as exc:  # what it is: the lake's, or the store's
            failure = _cause(exc, lock)
            _stopped(report, failure)
        finally:
            run.fill(report)
        report.quarantined = quarantine.count
        report.quarantine_file = str(quarantine.path) if quarantine.count else None
        _finish(report, clock, started)
        store.record_run(report_dict(report))
    write_report(report, state_path.parent)
    _publish(job, sink, state_path.parent, report, failure)
    if failure is not None:
        raise failure
    return report


def _cause(
    exc: LockedError | StorageError, lock: OutputLock | ObjectLock
) -> LockedError | StorageError:
    """What ended the run: a store error met after the lease was lost (a request cut off by a
    long pause, say) is the lost lease's doing, and is reported as that (exit 4)."""
    if isinstance(exc, LockedError) or not isinstance(lock, ObjectLock):
        return exc
    try:
        lock.check()
    except LockedError as lost:
        log.warning("%s", exc)
        return lost
    except StorageError:
        pass
    return exc


def _prepare(
    job: Job, store: StateStore, sink: ParquetSink, now: datetime, *, other_endpoint: bool
) -> None:
    """What a run does to the output before fetching: clean up, bind the state (migrating an
    older output's files once)."""
    removed = sink.cleanup()
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    bind_output(job, store, sink, now=now, other_endpoint=other_endpoint)


def _stopped(report: RunReport, exc: HarvesterError) -> None:
    """The run ended on ``exc``: the report says so, with its exit code."""
    report.stopped_by = type(exc).__name__
    report.message = str(exc)
    report.exit_code = exc.exit_code


def _publish(
    job: Job,
    sink: ParquetSink,
    state_dir: Path,
    report: RunReport,
    failure: HarvesterError | None,
) -> None:
    """Copy the report into the lake, unless this run no longer holds it (exit 4): then the
    copy beside the state is the only one. A failing copy after a failed run is logged."""
    if isinstance(failure, LockedError):
        log.info("the run report is kept beside the state only: this run no longer holds the lake")
        return
    try:
        with storage_errors(job.output):
            text = report.to_json() + "\n"
            publish_report(sink.objects, job.output, state_dir, report.run_id, text)
    except (LockedError, StorageError) as exc:
        if failure is None:
            raise
        log.warning("the run report could not be copied into %s: %s", job.output, exc)


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
        self.job, self.options, self.store, self.sink = job, options, store, sink
        self.token = StopToken(sleep=clock.sleep)
        # Collections the API said are gone: the ledger skips them, workers too, mid-run.
        self.gone = store.gone_collections() if not rules.retry_gone else set()
        # What is done: the state, checked against the dataset's files (see harvester.state.record).
        # One view, reconciled once, for the plan and the progress counter alike.
        self.view = DatasetView(store, sink, job_window(job), write=True)
        self.ledger = Ledger(self.view, rules, self.gone)
        self.committer = Committer(
            store, sink, self.ledger, quarantine, rules, self.gone, clock=clock
        )
        self.breaker = CircuitBreaker(job.retry.circuit_breaker_seconds, clock=clock.monotonic)
        self.pool: WorkerPool[tuple[Lane, Unit]] = WorkerPool(job.concurrency, self.token)
        self.clock = clock
        # One lane per account; several accounts stop one at a time, one account stops the run.
        self.lanes: list[Lane] = []
        self.several = len(accounts_of(job)) > 1
        self.units_in_job = count_units(job)
        self.stopped_by: str | None = None
        self.stopped: HarvesterError | None = None  # what stopped the whole run, if anything
        self.exit_code = EXIT_OK
        # The time at least one account's requests were held back: never more than the run.
        self.started = clock.monotonic()
        self.held = HoldMeter(clock.monotonic)
        self.handed: Counter[str] = Counter()  # units handed to a worker, per account

    async def run(self, endpoints: Mapping[str, tuple[str, Credentials]]) -> None:
        """Recover staged answers, discover collections, fetch every pending unit, commit."""
        if not self.several:
            await self._recover()
        # Every key's budget, shared with every process spending it (exit 2 if unreachable).
        breaker = None if self.several else self.breaker
        try:
            self.lanes = await open_lanes(self.job, endpoints, self.clock, self.token, breaker)
        except BudgetUnavailable as exc:
            await self._fail_left(self.job, exc)
            raise
        for lane in self.lanes:
            lane.pacer.hold_meter.parent = self.held
        try:
            for lane in self.lanes:
                start_lane(lane, self.job, self.clock, self.token)
            try:
                job = await self._discover()
            except RUN_STOPS as exc:  # one account's listing failed, or a budget is gone
                await self._fail_left(self.job, exc)
                raise
            if self.several:  # after discovery: the written rows name their account
                await self._recover()
            await self._fetch(job)
        finally:
            await close_lanes(self.lanes)

    async def _fail_left(self, job: Job, stop: HarvesterError) -> None:
        """The run stopped before fetching: every unit the job still needs fails with the
        stop's reason (none is requested), so that the report and the state say so."""
        self.stopped = stop
        lanes = {lane.name: lane for lane in self.lanes}
        owners = _owners(job)
        writer = asyncio.create_task(self.committer.run())
        for unit in self.ledger.pending(iter_windows(job)):
            self.committer.put(self._not_fetched(unit, stop, "the run stopped"))
            lane = lanes.get(owners.get(unit.collection_hash, ""))
            if lane is not None:
                lane.counts["failed"] += 1
        self.committer.close()
        await writer

    async def _recover(self) -> None:
        """Write what an interrupted run fetched and did not write, unless the dataset holds
        newer answers (another run's): the dataset is read first."""
        await asyncio.to_thread(self.view.load)
        recovered = await self.committer.flush_all(recovery=True)
        if recovered:
            log.info("wrote %d fetched units an interrupted run had not written", recovered)

    def fill(self, report: RunReport) -> None:
        """Put every stage's counts into the report: the one place the report is written."""
        plan, done = self.ledger.counts, self.committer.counts
        report.units_in_job = self.units_in_job
        report.units_already_done = plan.already_done
        report.units_to_fetch = plan.to_fetch
        report.units_provisional = plan.provisional
        report.units_changed = plan.changed
        report.units_not_begun = plan.not_begun
        report.units_outside = plan.outside
        report.units_fetched = done.fetched
        report.units_committed = done.committed
        report.units_recovered = done.recovered
        report.units_superseded = done.superseded
        report.units_failed = done.failed
        report.units_gone = plan.gone + done.gone
        report.failed = list(done.failures)
        # The plan is read to its end even after a stop (without fetching), so this is exact.
        report.units_not_attempted = max(
            0,
            report.units_in_job
            - plan.already_done
            - plan.not_begun
            - plan.outside
            - report.units_gone
            - done.fetched
            - done.failed,
        )
        report.page_rows_written = done.page_rows
        report.collection_rows_written = done.collection_rows
        report.files_written = done.files
        report.partitions_written = done.partitions
        report.commits = done.commits
        report.units_lost = done.lost
        report.unreadable_files = [
            {"path": q.file.path, "reason": q.file.reason, "moved_to": q.moved_to}
            for q in self.sink.quarantined
        ]
        if self.stopped_by is not None:
            report.stopped_by = report.stopped_by or self.stopped_by
        if report.exit_code == EXIT_OK:
            report.exit_code = self.exit_code
        if self.lanes:
            report_accounts(report, self.lanes)
            report.rate_limit_held_seconds = round(self.held.seconds, 3)
        self._report_stopped_accounts(report)

    def _report_stopped_accounts(self, report: RunReport) -> None:
        """Several accounts: name those that stopped; rejected credentials make the exit 3."""
        stopped = [lane for lane in self.lanes if lane.stopped is not None]
        if not stopped:
            return
        rejected = [lane.name for lane in stopped if isinstance(lane.stopped, CredentialsRejected)]
        report.accounts_rejected = rejected
        if report.exit_code in (EXIT_OK, EXIT_UNITS_FAILED):
            report.exit_code = EXIT_CREDENTIALS if rejected else EXIT_UNITS_FAILED
        lines = [f"account {lane.name} stopped: {lane.stopped}" for lane in stopped]
        report.message = "; ".join(filter(None, [report.message, *lines]))

    async def _discover(self) -> Job:
        """The job with each account's collections added, for the accounts that ask."""
        job = self.job
        found = await asyncio.gather(*(self._discover_lane(lane) for lane in self.lanes))
        listed = {lane.name: h for lane, h in zip(self.lanes, found, strict=True) if h is not None}
        if listed:  # for `harvester plan`, which makes no request
            write_discovered(self.sink.objects, self.job.output, listed, now=self.clock.now())
        for lane, hashes in zip(self.lanes, found, strict=True):
            if hashes is None:
                continue
            before = len(job.collections)
            job, lane.account = account_discovered(job, lane.account, hashes)
            log.info(
                "%sdiscovered %d collections (%d not listed in the job)",
                f"account {lane.name}: " if self.several else "",
                len(hashes),
                len(job.collections) - before,
            )
        self.units_in_job = count_units(job)
        self.sink.owners.update(_owners(job))
        return job

    async def _discover_lane(self, lane: Lane) -> list[str] | None:
        """One account's collection hashes, or None when it does not discover (or stopped)."""
        discovery, fetcher = lane.account.discover, lane.fetcher
        if discovery is None or fetcher is None:
            return None
        try:
            return await fetcher.discover(discovery)
        except UnitError as exc:
            failed = DiscoveryFailed(f"{exc.reason} ({exc.kind}, {exc.attempts} attempts)")
            if not self.several:
                raise failed from exc
            lane.stop(failed)
        except CredentialsRejected as exc:
            if not self.several:
                raise
            lane.stop(exc)
        return None

    async def _fetch(self, job: Job) -> None:
        """Run the pool over the pending units with the writer beside it; honour signals."""
        accounts = accounts_of(job)
        last_day = {a.name: max((c.end for c in a.collections), default=date.min) for a in accounts}
        splitter = Splitter(iter_windows(job), _owners(job), last_day, self.ledger)
        streams = [(lane, self.ledger.pending(splitter.stream(lane.name))) for lane in self.lanes]
        units = Scheduler(streams, Lane.soonest)
        writer = asyncio.create_task(self.committer.run())
        writer.add_done_callback(self._writer_done)
        reporter = self._progress(job)
        progress = asyncio.create_task(reporter.run()) if reporter else None
        loop = asyncio.get_running_loop()
        signals = SIGNAL_EXIT if self.options.handle_signals else {}
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        log.info(
            "%s: %d units in the job; fetching those not yet done (concurrency %d)",
            job.source,
            self.units_in_job,
            job.concurrency,
        )
        try:
            await self.pool.run(units, self._work)
        finally:
            if progress is not None:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
            hard_stop = self.token.reason == "second signal"
            if not hard_stop:
                # What the stop left, without a call: failed with the reason of the stop (of
                # the run, or of the unit's account), or, after a signal, only counted.
                for lane, unit in units:
                    if lane.stopped is not None or self.stopped is not None:
                        self._skip(lane, unit)
            self.committer.close()
            await writer  # the writer never runs two commits at once: wait, don't cancel
            if not hard_stop:
                await self.committer.flush_all()
            for signum in signals:
                loop.remove_signal_handler(signum)
        if self.token.reason in ("SIGINT", "SIGTERM", "second signal"):
            log.warning("stopped by a signal; fetched units are committed; rerun to resume")

    async def _work(self, item: tuple[Lane, Unit]) -> None:
        """One unit, fetched; its outcome handed to the writer, whatever it is."""
        lane, unit = item
        self.handed[lane.name] += 1
        if lane.stopped is not None or lane.fetcher is None:
            self._skip(lane, unit)
            return
        if unit.collection_hash in self.gone:
            self.committer.put(Gone(unit))  # learnt mid-run: no call for the rest of it
            return
        try:
            self.committer.put(await lane.fetcher.fetch(unit))
            lane.counts["fetched"] += 1
        except (Stopped, asyncio.CancelledError):
            self._skip(lane, unit)  # failed with a stop's reason, or abandoned after a signal
            _raise_if_cancelled()
        except CircuitOpen as exc:
            if isinstance(exc.__cause__, UnitError):
                self.committer.put(exc.__cause__)
                lane.counts["failed"] += 1
            if self.several:
                lane.stop(exc)  # this account's API is down: the others go on
                if not isinstance(exc.__cause__, UnitError):
                    self._skip(lane, unit)
                return
            self._stop_run(exc, "circuit breaker")
            if not isinstance(exc.__cause__, UnitError):
                self._skip(lane, unit)
            raise
        except CredentialsRejected as exc:
            if self.several:
                lane.stop(exc)
                self._skip(lane, unit)
                return
            self._stop_run(exc, "credentials")
            self._skip(lane, unit)
            raise
        except BudgetUnavailable as exc:
            self._stop_run(exc, "rate budget")
            self._skip(lane, unit)
            raise
        except UnitError as exc:
            self.committer.put(exc)
            lane.counts["failed"] += 1

    def _stop_run(self, stop: HarvesterError, reason: str) -> None:
        """Stop the whole run: no unit is handed out any more, those left fail with ``stop``."""
        if self.stopped is None:
            self.stopped = stop
        self.token.set(reason)

    def _skip(self, lane: Lane, unit: Unit) -> None:
        """A unit ended without an answer: failed with the reason when its account or the
        run stopped (the job is not done, and the report must say so), else (a signal) left
        for the next run."""
        if lane.stopped is not None:
            failure = self._not_fetched(unit, lane.stopped, f"account {lane.name} stopped")
        elif self.stopped is not None:
            failure = self._not_fetched(unit, self.stopped, "the run stopped")
        else:
            self.committer.put(unit)
            lane.counts["abandoned"] += 1
            return
        self.committer.put(failure)
        lane.counts["failed"] += 1

    def stop_writing(self) -> None:
        """The lock was lost (a renewal refused or failed): hand out no more units, abandon
        those in flight; the next write attempt raises why."""
        self.token.set("lock lost")
        self.pool.cancel()

    @staticmethod
    def _not_fetched(unit: Unit, stop: HarvesterError, who: str) -> NotFetched:
        """A unit's failure for a stop that came before its answer."""
        failure = NotFetched(f"not fetched: {who}: {stop}")
        failure.unit = unit
        return failure

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

    def _progress(self, job: Job) -> Progress | None:
        """The progress reporter the options ask for, with the run's total counted up front."""
        options = self.options
        if not options.live_progress and not options.progress_every:
            return None
        # One pass of the plan without fetching (about a second for a million units): the
        # totals the ETA needs, which the lazy plan only knows at its end.
        counter = Ledger(self.view, self.ledger.rules, set(self.gone))
        owners = _owners(job)
        totals = Counter(owners.get(u.collection_hash) for u in counter.pending(iter_windows(job)))
        total = sum(totals.values())
        plan, done, lanes, clock = self.ledger.counts, self.committer.counts, self.lanes, self.clock

        def floor(now: float) -> float:
            """The slowest budget's least time for its calls left, from its windows now."""
            budgets: dict[str, tuple[int, list[tuple[WindowUse, ...]]]] = {}
            for lane in lanes:
                if lane.stopped is not None:
                    continue  # its units end without a call
                # Units not handed out yet need a call each; those asking for a place, one more.
                left = max(0, totals[lane.name] - self.handed[lane.name]) + lane.pacer.waiting
                key = budget_digest(lane.base_url, lane.credentials.key)  # one key, one budget
                calls, uses = budgets.get(key, (0, []))
                budgets[key] = (calls + left, [*uses, tuple(lane.pacer.window_use())])
            return least_seconds(budgets.values(), now)

        def snapshot() -> Snapshot:
            now = clock.monotonic()
            return Snapshot(
                resolved=done.fetched + done.failed + done.gone,
                to_fetch=max(total, plan.to_fetch),
                failed=done.failed,
                calls=sum(lane.pacer.calls for lane in lanes),
                held_seconds=self.held.seconds,
                elapsed=now - self.started,
                floor_seconds=floor(now),
            )

        every = options.progress_every or PROGRESS_EVERY_SECONDS
        return Progress(snapshot, every=every, live=options.live_progress)


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation after recording the abandoned unit (a hard stop)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _owners(job: Job) -> dict[str, str]:
    """Collection hash → the name of the account it belongs to."""
    return {c.hash: a.name for a in accounts_of(job) for c in a.collections}
