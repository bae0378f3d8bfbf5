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
        facts.append(f"{len(job.accounts)} accounts ({names}), each with its own key{more}")
    elif not job.api.uses_simulator:
        facts.append(f"credentials from ${job.api.key_env} and ${job.api.secret_env}")
    return ", ".join(facts)
