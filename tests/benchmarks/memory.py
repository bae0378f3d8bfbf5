"""Figure 3: peak memory does not grow with the number of units.

Two runs with limits off and no latency, the same 200 collections (so the same partition size,
about 2,500 page rows a day), one of 100 days (20,000 units) and one of 1,000 days (200,000
units). Peak RSS is the harvester child's ``ru_maxrss`` from ``os.wait4``: the high-water mark
of the whole process, interpreter and libraries included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.benchmarks.common import (
    Child,
    Figure,
    RecordingSimulator,
    run_harvester,
    sim_config,
    write_job,
)
from tests.benchmarks.overhead import UNLIMITED

COLLECTIONS = 200
SMALL_DAYS, BIG_DAYS = 100, 1000
CONCURRENCY = 16
RATIO_GOAL = 1.2
ABSOLUTE_GOAL_MB = 300


def _run(sim: RecordingSimulator, workdir: Path, days: int) -> tuple[Child, dict[str, Any]]:
    job = write_job(
        workdir / f"memory-{days}.yaml",
        sim.base_url,
        workdir / f"memory-{days}-out",
        collections=COLLECTIONS,
        days=days,
        limits=UNLIMITED,
        concurrency=CONCURRENCY,
    )
    return run_harvester(job)


def run(workdir: Path) -> list[Figure]:
    """20 k units, then 200 k units, against one simulator (limits off)."""
    with RecordingSimulator(sim_config(enforce_limits=False)) as sim:
        small, _ = _run(sim, workdir, SMALL_DAYS)
        big, report = _run(sim, workdir, BIG_DAYS)
    ratio = big.max_rss_mb / small.max_rss_mb
    units = COLLECTIONS * BIG_DAYS
    if report["units_committed"] != units:
        raise RuntimeError(f"the 200 k run committed {report['units_committed']} units")
    return [
        Figure(
            "peak RSS 200 k / 20 k units",
            f"{ratio:.2f}",
            f"<= {RATIO_GOAL}",
            ratio <= RATIO_GOAL,
            f"{big.max_rss_mb:.0f} MB vs {small.max_rss_mb:.0f} MB",
        ),
        Figure(
            "peak RSS 200 k units, MB",
            f"{big.max_rss_mb:.0f}",
            f"< {ABSOLUTE_GOAL_MB}",
            big.max_rss_mb < ABSOLUTE_GOAL_MB,
            f"the 200 k run took {report['elapsed_seconds']:.0f} s "
            f"({units / report['elapsed_seconds']:.0f} units/s), the 20 k run {small.wall:.0f} s",
        ),
    ]
