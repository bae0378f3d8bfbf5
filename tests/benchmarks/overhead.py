"""Figure 2: the harvester's cost over the bare minimum of HTTP work, with nothing else binding.

Limits off (the simulator does not enforce them; the job's one window is 1,000,000/s), no
latency, 50 pages per unit, Parquet written. The floor is a minimal aiohttp loop (:func:`main`,
run as its own child process) that GETs the same signed URLs with the same concurrency from the
same simulator and discards the bodies. Both run twice, alternating, against one simulator
process whose answer caches are warm for every unit (the unit count fits them); each figure is
the better of its two runs, so a burst of noise from a neighbour costs neither side.

    overhead ratio = (units / harvester elapsed) / (units / raw-loop elapsed)

The harvester's elapsed is its report's ``elapsed_seconds`` (open state, fetch, stage, write
Parquet, final flush); the loop's is first request to last body. Interpreter start-up and
imports are outside both. CPU seconds come from ``os.wait4`` of each child (whole process).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from harvester.fetch.client import StatsClient
from harvester.job.credentials import Credentials
from harvester.job.parse import load_job
from harvester.model import RateLimit
from harvester.plan.windows import iter_units
from tests.benchmarks.common import (
    API_KEY,
    API_SECRET,
    Child,
    Figure,
    RecordingSimulator,
    hashes,
    run_child,
    run_harvester,
    sim_config,
    write_job,
)

UNLIMITED = (RateLimit(1_000_000, 1.0),)
PAGES = 50
COLLECTIONS, DAYS = 200, 20  # 4,000 units, within the simulator's page cache (4,096 days)
CONCURRENCY = 16
ROUNDS = 2
# Not met (0.46 measured): the README's Performance section says where the time goes. The figure
# is reported against this goal, as information; it does not fail the suite.
GOAL = 0.8


def run(workdir: Path) -> list[Figure]:
    """Harvester vs raw loop, twice each, alternating; the better of each."""
    config = sim_config(
        enforce_limits=False, pages={h: PAGES for h in hashes(COLLECTIONS)}, max_pages=PAGES
    )
    with RecordingSimulator(config) as sim:
        jobs = [
            write_job(
                workdir / f"overhead-{i}.yaml",
                sim.base_url,
                workdir / f"overhead-out-{i}",
                collections=COLLECTIONS,
                days=DAYS,
                limits=UNLIMITED,
                concurrency=CONCURRENCY,
            )
            for i in range(ROUNDS)
        ]
        raw_loop(jobs[0])  # warm the simulator's caches
        raws: list[tuple[float, Child]] = []
        harvests: list[tuple[float, Child, dict[str, Any]]] = []
        for job in jobs:  # each harvest into a fresh output: a first run, every time
            raws.append(raw_loop(job))
            child, report = run_harvester(job)
            harvests.append((report["elapsed_seconds"], child, report))
        counters = sim.counters()
    units = COLLECTIONS * DAYS
    raw_s, raw_child = min(raws, key=lambda r: r[0])
    harvest_s, harvest_child, report = min(harvests, key=lambda h: h[0])
    ratio = raw_s / harvest_s
    answered = counters["codes"].get("20", 0)
    if answered != units * (1 + 2 * ROUNDS) or report["units_committed"] != units:
        raise RuntimeError(f"unexpected answers: {counters['codes']}, report {report['outcome']}")
    per_k = 1000 / units
    return [
        overhead_figure(
            ratio,
            f"{units / harvest_s:.0f} vs {units / raw_s:.0f} units/s; {units} units x {PAGES} "
            f"pages, concurrency {CONCURRENCY}, Parquet written",
        ),
        Figure(
            "CPU s per 1,000 units, harvester",
            f"{harvest_child.cpu * per_k:.2f}",
            note=f"raw loop {raw_child.cpu * per_k:.2f}; whole child process incl. start-up",
        ),
    ]


def overhead_figure(ratio: float, note: str) -> Figure:
    """The overhead row: measured against GOAL, but only informing (see GOAL)."""
    return Figure(
        "client overhead: harvester / raw loop units/s",
        f"{ratio:.2f}",
        f">= {GOAL}",
        ratio >= GOAL,
        note,
        gates=False,
    )


def raw_loop(job: Path) -> tuple[float, Child]:
    """Run :func:`main` as a child; (its elapsed seconds, the child)."""
    child = run_child([sys.executable, "-m", "tests.benchmarks.overhead", str(job)])
    if child.exit_code != 0:
        raise RuntimeError(f"raw loop exited {child.exit_code}:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout)["elapsed"], child


async def _fetch_all(urls: list[str], concurrency: int) -> float:
    """GET every URL with ``concurrency`` workers, discard the bodies; return elapsed seconds."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        pending = iter(urls)

        async def worker() -> None:
            for url in pending:
                async with session.get(url) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def main(job_path: str) -> None:
    """The raw loop: the job's signed URLs, fetched with the job's concurrency."""
    job = load_job(Path(job_path))
    client = StatsClient(None, job.api.base_url, Credentials(API_KEY, API_SECRET))  # type: ignore[arg-type]
    urls = [str(client.url(unit)) for unit in iter_units(job)]
    elapsed = asyncio.run(_fetch_all(urls, job.concurrency))
    print(json.dumps({"units": len(urls), "elapsed": elapsed}))


if __name__ == "__main__":
    main(sys.argv[1])
