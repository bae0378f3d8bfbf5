"""Prometheus metrics of a run: a textfile for node_exporter, or a push to a Pushgateway.

Every metric describes the output's last run, except two that look further back:
``harvester_last_success_timestamp_seconds`` is read from the run reports kept with the output
(so a failed run, or a new container, does not reset it) and
``harvester_newest_period_end_timestamp_seconds`` from the data itself.

Labels: ``harvest_job`` (the job file), ``output`` and ``account`` identify a harvest; the
others (``outcome``, ``code``, ``dataset``) take a handful of values. No label ever holds a
collection hash, so the number of series does not grow with the account. A pushed group is
keyed ``job="harvester"`` plus the identifying labels (the Pushgateway adds them to every
metric, so a pushed metric carries the same labels as one read from the textfile).

``prometheus_client`` is the ``[metrics]`` extra: it is imported only here, only when asked for.
"""

from __future__ import annotations

import http.client
import logging
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from harvester.errors import UsageError
from harvester.job.location import Location
from harvester.lake.fs import open_sink
from harvester.lake.output import read_meta
from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from harvester.layout import ALL_ACCOUNTS, DEFAULT_ACCOUNT, REPORTS_DIR
from harvester.ops.runs import last_success, read_runs, report_folders, report_folders_of
from harvester.run.report import RunReport

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "ACCOUNT_METRICS",
    "METRICS",
    "AccountMetrics",
    "RunMetrics",
    "check_target",
    "collect",
    "export",
    "newest_period_end",
    "registry",
]

log = logging.getLogger("harvester.metrics")

PREFIX = "harvester_"
PUSH_JOB = "harvester"
PUSH_TIMEOUT_SECONDS = 10.0
INSTALL_HINT = "pip install 'harvester[metrics]'"


# Every metric: its name after the prefix, its help, and its one bounded label ("": none).
METRICS: tuple[tuple[str, str, str], ...] = (
    ("last_success_timestamp_seconds", "When the newest run exiting 0 finished (0: none).", ""),
    ("last_run_timestamp_seconds", "When the last run finished.", ""),
    ("last_run_duration_seconds", "How long the last run took.", ""),
    ("last_run_exit_code", "The last run's exit code (0: every unit succeeded).", ""),
    ("last_run_units", "Units of the last run's job, by outcome.", "outcome"),
    ("last_run_requests", "Requests the last run sent.", ""),
    ("last_run_answers", "Answers the last run got, by API code or kind of failure.", "code"),
    ("last_run_retries", "Attempts the last run made again.", ""),
    ("last_run_rate_limit_wait_seconds", "Seconds the last run waited on the rate limiter.", ""),
    ("last_run_rows_written", "Rows the last run wrote, by dataset.", "dataset"),
    ("newest_period_end_timestamp_seconds", "End of the newest period in collection_stats.", ""),
)
# With several accounts, each account's share of the last run, labelled with its name (the
# run-wide series above then carry account="all").
ACCOUNT_METRICS: tuple[tuple[str, str, str], ...] = (
    ("account_last_run_units", "One account's units of the last run, by outcome.", "outcome"),
    ("account_last_run_requests", "Requests the last run sent for one account.", ""),
    ("account_last_run_answers", "Answers one account got in the last run, by code.", "code"),
    ("account_last_run_stopped", "1 when the last run stopped the account (41/44, down).", ""),
)


@dataclass(frozen=True)
class RunMetrics:
    """The metrics' values (fields named as in METRICS), for the file and the push alike."""

    labels: dict[str, str]  # the identifying labels: harvest_job, output, account
    last_success_timestamp_seconds: float  # 0 when no run of this output has exited 0 yet
    last_run_timestamp_seconds: float
    last_run_duration_seconds: float
    last_run_exit_code: int
    last_run_units: dict[str, int]
    last_run_requests: int
    last_run_answers: dict[str, int]
    last_run_retries: int
    last_run_rate_limit_wait_seconds: float
    last_run_rows_written: dict[str, int]
    newest_period_end_timestamp_seconds: float | None  # None: no rows yet, no metric
    accounts: dict[str, AccountMetrics] = field(default_factory=dict)  # several accounts only


@dataclass(frozen=True)
class AccountMetrics:
    """One account's share of the last run (fields named as in ACCOUNT_METRICS)."""

    account_last_run_units: dict[str, int]
    account_last_run_requests: int
    account_last_run_answers: dict[str, int]
    account_last_run_stopped: int


def collect(report: RunReport, output: Path | Location) -> RunMetrics:
    """The metrics of ``report``'s run on ``output``, with the history its reports keep."""
    finished = _timestamp(report.finished_at)
    beside_state = Path(report.state).parent / REPORTS_DIR
    if isinstance(output, Location) and not output.is_local:
        with report_folders_of(output) as folders:  # the lake's copies: a new machine's too
            history = read_runs([*folders, beside_state])
    else:
        history = read_runs(report_folders(Path(output), beside_state))
    success = last_success(history.runs)
    last_ok = success.finished_at.timestamp() if success and success.finished_at else 0.0
    if report.exit_code == 0:
        last_ok = max(last_ok, finished)
    several = len(report.by_account) > 1
    accounts = {
        name: AccountMetrics(
            account_last_run_units={
                "fetched": int(f.get("units_fetched", 0)),
                "failed": int(f.get("units_failed", 0)),
                "not_attempted": int(f.get("units_not_attempted", 0)),
            },
            account_last_run_requests=int(f.get("requests", 0)),
            account_last_run_answers=dict(f.get("answers_by_code", {})),
            account_last_run_stopped=int(bool(f.get("stopped_by"))),
        )
        for name, f in (report.by_account.items() if several else ())
    }
    account = ALL_ACCOUNTS if several else DEFAULT_ACCOUNT
    return RunMetrics(
        accounts=accounts,
        labels={"harvest_job": report.job, "output": report.output, "account": account},
        last_success_timestamp_seconds=last_ok,
        last_run_timestamp_seconds=finished,
        last_run_duration_seconds=report.elapsed_seconds,
        last_run_exit_code=report.exit_code,
        last_run_units={
            "committed": report.units_committed,
            "failed": report.units_failed,
            "already_done": report.units_already_done,
            "not_attempted": report.units_not_attempted,
            "gone": report.units_gone,
            "not_begun": report.units_not_begun,
            "recovered": report.units_recovered,
        },
        last_run_requests=report.requests,
        last_run_answers=dict(report.answers_by_code),
        last_run_retries=report.retries,
        last_run_rate_limit_wait_seconds=report.rate_limit_wait_seconds,
        last_run_rows_written={
            PAGE_STATS: report.page_rows_written,
            COLLECTION_STATS: report.collection_rows_written,
        },
        newest_period_end_timestamp_seconds=newest_period_end(output),
    )


def newest_period_end(output: Path | Location) -> float | None:
    """Midnight UTC after the newest ``period_end`` in collection_stats (None: no rows)."""
    import pyarrow.compute as pc

    meta = read_meta(output)
    if meta is None:
        return None
    location = output if isinstance(output, Location) else Location.local(output)
    table = open_sink(location, meta.format).read(COLLECTION_STATS, ["period_end"])
    newest = pc.max(table["period_end"]).as_py()
    if newest is None:
        return None
    return datetime.combine(newest + timedelta(days=1), time(), UTC).timestamp()


def registry(metrics: RunMetrics, *, labelled: bool = True) -> CollectorRegistry:
    """A registry holding ``metrics``; ``labelled=False`` leaves the identifying labels out
    (a push carries them in its grouping key instead)."""
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    ident = metrics.labels if labelled else {}
    for name, doc, by in METRICS:
        value: float | Mapping[str, float] | None = getattr(metrics, name)
        if value is None:
            continue
        family = Gauge(PREFIX + name, doc, [*ident, by] if by else list(ident), registry=reg)
        if isinstance(value, Mapping):
            for key, number in sorted(value.items()):
                family.labels(**ident, **{by: key}).set(number)
        else:
            (family.labels(**ident) if ident else family).set(value)
    if labelled:  # the textfile: every account's families beside the run-wide ones
        _account_families(reg, metrics, metrics.accounts)
    return reg


def account_registry(metrics: RunMetrics, name: str) -> CollectorRegistry:
    """One account's families without identifying labels, for its own pushed group."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    _account_families(reg, metrics, {name: metrics.accounts[name]}, labelled=False)
    return reg


def _account_families(
    reg: CollectorRegistry,
    metrics: RunMetrics,
    accounts: Mapping[str, AccountMetrics],
    *,
    labelled: bool = True,
) -> None:
    """Add each account's families, labelled with its name (unless ``labelled=False``)."""
    from prometheus_client import Gauge

    if not accounts:
        return
    ident = [k for k in metrics.labels] if labelled else []
    for name, doc, by in ACCOUNT_METRICS:
        family = Gauge(PREFIX + name, doc, [*ident, by] if by else ident, registry=reg)
        for account, figures in accounts.items():
            labels = {**metrics.labels, "account": account} if labelled else {}
            value: float | Mapping[str, float] = getattr(figures, name)
            if isinstance(value, Mapping):
                for key, number in sorted(value.items()):
                    family.labels(**labels, **{by: key}).set(number)
            else:
                (family.labels(**labels) if labels else family).set(value)


def require() -> None:
    """Raise UsageError unless the ``[metrics]`` extra is installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError(
            f"--metrics-file and --pushgateway need prometheus_client: {INSTALL_HINT}"
        ) from None


def check_target(metrics_file: Path | None) -> None:
    """Before a run: the extra is installed, the metrics file's folder exists, and what is
    there already is a regular file (the file is written beside, then renamed over it)."""
    require()
    if metrics_file is None:
        return
    if not metrics_file.parent.is_dir():
        raise UsageError(f"--metrics-file {metrics_file}: no folder {metrics_file.parent}")
    _check_regular(metrics_file)


def _check_regular(path: Path) -> None:
    """Raise UsageError if ``path`` exists and is not a regular file: renaming over a device,
    a FIFO or a symbolic link would replace it (``/dev/full`` with a file of metrics)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"--metrics-file {path}: cannot be checked: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"--metrics-file {path}: {_kind(mode)}, not a regular file: writing the metrics"
            " would replace it; name a file (node_exporter's textfile collector reads *.prom)"
        )


def _kind(mode: int) -> str:
    """What a non-regular file is, in a few words."""
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def export(
    report: RunReport,
    output: Path | Location,
    *,
    metrics_file: Path | None = None,
    pushgateway: str | None = None,
) -> None:
    """Write the run's metrics to ``metrics_file`` and/or push them to ``pushgateway``.

    Neither can fail the run, whose data is committed already: a failure is logged.
    """
    if metrics_file is None and pushgateway is None:
        return
    require()
    from prometheus_client import push_to_gateway, write_to_textfile

    metrics = collect(report, output)
    if metrics_file is not None:
        try:
            _check_regular(metrics_file)  # again: the run took a while
            write_to_textfile(str(metrics_file), registry(metrics))  # beside, then renamed
        except (OSError, UsageError) as exc:
            log.error("could not write the metrics file %s: %s", metrics_file, exc)
    if pushgateway is not None:
        try:
            push_to_gateway(
                pushgateway,
                job=PUSH_JOB,
                registry=registry(metrics, labelled=False),
                grouping_key=metrics.labels,
                timeout=PUSH_TIMEOUT_SECONDS,
            )
            for account in metrics.accounts:  # each account in a group of its own
                push_to_gateway(
                    pushgateway,
                    job=PUSH_JOB,
                    registry=account_registry(metrics, account),
                    grouping_key={**metrics.labels, "account": account},
                    timeout=PUSH_TIMEOUT_SECONDS,
                )
        except (OSError, ValueError, http.client.HTTPException) as exc:
            log.warning("could not push the metrics to %s: %s", _where(pushgateway), exc)


def _timestamp(iso: str) -> float:
    """A report's ISO time as Unix time (now, if the report has none)."""
    if not iso:
        return datetime.now(UTC).timestamp()
    moment = datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _where(url: str) -> str:
    """The gateway's host and port, for a message (a URL may carry a password)."""
    netloc = urlsplit(url if "://" in url else f"http://{url}").netloc
    return netloc.rpartition("@")[2] or url
