"""Figure 4: planning a million units (``harvester run JOB --dry-run``) in time and memory.

Without a state file or a dataset a dry run only counts units, so the figure that matters is
the dry run of a job that already has both: it lists the dataset's files, finds them as the
state recorded them, walks the whole plan, asks the state which units are done and counts what
is left. Every other unit of each day is committed (a half-finished back-fill: written to the
dataset and recorded in the state, as a run does), so every unit is looked up and half of them
are found. ``tests/benchmarks/lake_planning.py`` times the other cases (no state: rebuilt from
the dataset; a partition deleted by hand).

Time is the child's wall clock, interpreter start-up and YAML parsing included; memory is its
peak RSS from ``os.wait4``, compared with the same dry run of a job ten times smaller.
"""

from __future__ import annotations

from pathlib import Path

from harvester.model import RateLimit
from harvester.state.store import default_state_path
from tests.benchmarks.common import Child, Figure, run_harvester, write_job
from tests.benchmarks.lake_planning import write_lake

COLLECTIONS = 1000
BIG_DAYS, SMALL_DAYS = 1000, 100
TIME_GOAL = 2.0
MEMORY_GOAL = 1.1  # "independent of the unit count": within 10 %
LIMITS = (RateLimit(5, 1.0), RateLimit(60, 60.0))
ROUNDS = 3


def dry_run(workdir: Path, days: int, *, with_state: bool) -> Child:
    """Dry-run a 1,000-collection job of ``days`` days over a half-done lake (made on the first
    call, reused after); with its state, or with none (what is done is read from the dataset)."""
    name = f"plan-{days}"
    output = workdir / f"{name}-out"
    job = write_job(
        workdir / f"{name}.yaml",
        "http://127.0.0.1:9/v1/",
        output,
        collections=COLLECTIONS,
        days=days,
        limits=LIMITS,
        concurrency=4,
    )
    state = default_state_path(output)
    if not state.exists():
        write_lake(job, output, every=2)  # the dataset is the record: commit, as runs do
    pending = COLLECTIONS * days - (COLLECTIONS + 1) // 2 * days
    if not with_state:
        state = state.with_name("none.sqlite")  # --state names a file that does not exist
    child, _ = run_harvester(job, "--dry-run", "--state", str(state))
    expected = f"{pending:,} to fetch now"
    if expected not in child.stdout:
        raise RuntimeError(f"unexpected dry run output: {child.stdout!r}")
    return child


def run(workdir: Path) -> list[Figure]:
    """1 M units (best of three) vs 100 k units, with a state; and 1 M without one."""
    big = min(
        (dry_run(workdir, BIG_DAYS, with_state=True) for _ in range(ROUNDS)),
        key=lambda child: child.wall,
    )
    small = dry_run(workdir, SMALL_DAYS, with_state=True)
    fresh = dry_run(workdir, BIG_DAYS, with_state=False)
    memory = big.max_rss_mb / small.max_rss_mb
    return [
        Figure(
            "plan 1 M units (dry run, half done), s",
            f"{big.wall:.2f}",
            f"< {TIME_GOAL:g}",
            big.wall < TIME_GOAL,
            f"whole child process, best of {ROUNDS} (CPU {big.cpu:.2f} s); "
            f"{fresh.wall:.2f} s without a state (read from the dataset); 100 k units"
            f" {small.wall:.2f} s",
        ),
        Figure(
            "plan peak RSS 1 M / 100 k units",
            f"{memory:.2f}",
            f"<= {MEMORY_GOAL}",
            memory <= MEMORY_GOAL,
            f"{big.max_rss_mb:.0f} MB vs {small.max_rss_mb:.0f} MB",
        ),
    ]
