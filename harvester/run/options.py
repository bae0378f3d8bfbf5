"""How to run a job, beyond what the job file says: state, refresh, lock, clock, window, signals.

:class:`RunOptions` is the library's argument: it checks its fields when built, so a string
where a date belongs, a ``datetime`` for a ``date`` or a ``start`` after ``end`` is a
:class:`~harvester.errors.JobError` naming the field (exit 2), not a TypeError deep in a run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from harvester.errors import JobError, Problem
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
    # UTC; default: the clock's date, read once per run. Finality follows the answers'
    # fetched_at (the clock's): a run that plays another day passes a clock on that day too.
    today: date | None = None
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

    def __post_init__(self) -> None:
        problems = [
            Problem("RunOptions", f.name, message)
            for f in fields(self)
            if (message := _CHECKS.get(f.name, _anything)(getattr(self, f.name))) is not None
        ]
        start, end = self.start, self.end
        if not problems and start is not None and end is not None and start > end:
            message = f"start {start.isoformat()} is after end {end.isoformat()}: nothing to run"
            problems.append(Problem("RunOptions", "start", message))
        if problems:
            raise JobError(problems)
        if isinstance(self.state_path, str | os.PathLike):
            object.__setattr__(self, "state_path", Path(self.state_path))


def _found(value: Any) -> str:
    """What was given, for a message: its type and, for short plain values, itself."""
    shown = repr(value)
    return f"{type(value).__name__} {shown}" if len(shown) <= 40 else type(value).__name__


def _calendar_day(value: Any) -> str | None:
    """None for a date (or None); else what is wrong, and how to make one."""
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return None
    if isinstance(value, datetime):
        return (
            f"expected a datetime.date, found a datetime ({value.isoformat()}): pass"
            " value.date(), the UTC day it falls on (windows are whole days)"
        )
    if isinstance(value, str):
        return (
            f"expected a datetime.date, found the string {value!r}: pass"
            f" datetime.date.fromisoformat({value!r})"
        )
    return f"expected a datetime.date or None, found {_found(value)}"


def _anything(value: Any) -> str | None:
    return None


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected True or False, found {_found(value)}"


def _seconds(value: Any, *, optional: bool = False) -> str | None:
    if optional and value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and math.isfinite(value) and value >= 0:
        return None
    what = "a number of seconds >= 0" + (" or None" if optional else "")
    return f"expected {what}, found {_found(value)}"


def _path(value: Any) -> str | None:
    if value is None or isinstance(value, str | os.PathLike):
        return None
    return f"expected a path (pathlib.Path or str) or None, found {_found(value)}"


def _clock(value: Any) -> str | None:
    if value is None or all(callable(getattr(value, a, None)) for a in ("now", "monotonic")):
        return None
    return f"expected a harvester.model.Clock or None, found {_found(value)}"


_CHECKS = {
    "state_path": _path,
    "refresh": _flag,
    "wait_for_lock": _flag,
    "grace_seconds": _seconds,
    "today": _calendar_day,
    "clock": _clock,
    "retry_gone": _flag,
    "start": _calendar_day,
    "end": _calendar_day,
    "handle_signals": _flag,
    "progress_every": lambda v: _seconds(v, optional=True),
    "live_progress": _flag,
    "allow_unfenced": _flag,
    "allow_other_endpoint": _flag,
}


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
