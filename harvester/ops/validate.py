"""``harvester validate JOB``: the job file's checks alone, and one line saying what it holds.

No credentials are read, no request is made and nothing is written: the same validation a run
starts with (:func:`harvester.job.parse.load_job`), which raises JobError listing every problem.
"""

from __future__ import annotations

from pathlib import Path

from harvester.job.model import Job
from harvester.job.parse import load_job
from harvester.plan.windows import count_units

__all__ = ["describe"]


def describe(path: Path) -> str:
    """``JOB: valid (...)`` for a valid job file; raises JobError for an invalid one."""
    return f"{path}: valid ({_facts(load_job(path))})"


def _facts(job: Job) -> str:
    """What a run of ``job`` would do, in a few words."""
    listed = f"{len(job.collections)} collections"
    if job.discover is not None:
        listed += " + every collection the account lists at run time"
    facts = [listed, f"granularity {job.granularity}"]
    if job.collections:
        first = min(c.start for c in job.collections)
        last = max(c.end for c in job.collections)
        facts.append(f"{count_units(job)} units from {first.isoformat()} to {last.isoformat()}")
    source = "the bundled simulator" if job.api.uses_simulator else job.api.base_url
    facts += [f"output {job.output}", f"from {source}"]
    if job.accounts:
        names = ", ".join(a.name for a in job.accounts)
        discovering = ", ".join(a.name for a in job.accounts if a.discover is not None)
        more = f"; listing their collections at run time: {discovering}" if discovering else ""
        facts.append(f"{len(job.accounts)} accounts ({names}), {_keys(job)}{more}")
    elif not job.api.uses_simulator:
        facts.append(f"credentials from ${job.api.key_env} and ${job.api.secret_env}")
    return ", ".join(facts)


def _keys(job: Job) -> str:
    """Where the accounts' keys come from, and which share one (and so one rate budget).

    Only the variables' names are known here (no credentials are read): two variables may
    still hold one key, which the run then paces as one budget.
    """
    by_variable: dict[str, list[str]] = {}
    for account in job.accounts:
        by_variable.setdefault(account.api.key_env, []).append(account.name)
    said = f"keys from {_and([f'${name}' for name in by_variable])}"
    shared = [
        f"{_and(names)} share the key in ${variable} (one key: one rate budget)"
        for variable, names in by_variable.items()
        if len(names) > 1
    ]
    return "; ".join([said, *shared])


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
