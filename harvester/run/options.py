"""How to run a job, beyond what the job file says: state, refresh, lock, clock, window, signals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from harvester.job.model import Job
from harvester.model import Clock
from harvester.run.commit import Rules
from harvester.state.store import default_state_path

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "PROGRESS_EVERY_SECONDS",
    "RunOptions",
    "rules_of",
    "state_path_of",
]


DEFAULT_GRACE_SECONDS = 10.0


PROGRESS_EVERY_SECONDS = 30.0


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
    # Narrow the job to the units whose calendar window meets [start, end] (an orchestrator's
    # data interval); windows are selected whole, never clipped.
    start: date | None = None
    end: date | None = None
    # Stop gracefully on SIGINT/SIGTERM (the CLI asks for it); a library call never installs
    # handlers, which only the main thread may do.
    handle_signals: bool = False
    # Write to an output filled from another API endpoint (the same API under a new address);
    # the output's record then names both. Without it such a run is refused (exit 2).
    allow_other_endpoint: bool = False
    progress_every: float | None = PROGRESS_EVERY_SECONDS  # a log line every N s; None: off
    live_progress: bool = False  # a live display on stderr instead (the CLI, on a terminal)
    # Write to an object store that ignores conditional writes (the job's storage:
    # allow_unfenced says the same): nothing then keeps a second writer from overwriting.
    allow_unfenced: bool = False


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
    return Rules(
        today,
        job.page_stats,
        refresh_from,
        options.retry_gone,
        granularity=job.granularity,
        start=options.start,
        end=options.end,
    )
