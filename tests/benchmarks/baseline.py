"""Figure 6: the harvester against a naive sequential script doing the same job.

The naive script (:func:`main`, a child process) is what one writes first: one ``urllib`` call
after another, ``time.sleep(seconds / calls)`` of the strictest window after each call (so it
never trips a limit), the rows kept in lists and written to Parquet at the end. The harvester
runs the same 60-unit job at the same time on a second API key of the same simulator (the
simulator's windows are per key), so one wall-clock minute serves both.

Time is scaled by 1/2 so the suite stays short: the default limits 5/s + 60/min become
5/0.5 s + 60/30 s, the latency 300 ms becomes 150 ms. The speed-up is naive elapsed / harvester
elapsed, each measured by the process itself (first request to rows written; the report's
``elapsed_seconds``). A 60-unit job fits in one 60-call window, so the harvester spends it at
5 calls per (scaled) second; on a long job both are bound by 60/min and the speed-up tends to
(latency + sleep) / sleep = 1.3 at these limits.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pyarrow as pa
import pyarrow.parquet as pq

from harvester.api import GET_STATS, sign
from harvester.job.parse import load_job
from harvester.model import RateLimit
from harvester.plan.windows import iter_units
from tests.benchmarks.common import (
    API_KEY,
    API_SECRET,
    Figure,
    RecordingSimulator,
    run_child,
    run_harvester,
    sim_config,
    write_job,
)

SCALE = 0.5
LIMITS = (RateLimit(5, 1.0 * SCALE), RateLimit(60, 60.0 * SCALE))
LATENCY = 0.3 * SCALE
COLLECTIONS, DAYS = 6, 10  # 60 units
CONCURRENCY = 4  # the job file's default
NAIVE_KEY, NAIVE_SECRET = "KEY-naive-31aa", "SECRET-naive-8c0e"
GOAL = 1.0  # faster than the naive script; the table shows by how much


def run(workdir: Path) -> list[Figure]:
    """Both at once, on two keys of one simulator."""
    keys = {API_KEY: API_SECRET, NAIVE_KEY: NAIVE_SECRET}
    config = sim_config(rate_limits=LIMITS, latency=(LATENCY, LATENCY), keys=keys)
    with RecordingSimulator(config) as sim:
        job = write_job(
            workdir / "baseline.yaml",
            sim.base_url,
            workdir / "baseline-out",
            collections=COLLECTIONS,
            days=DAYS,
            limits=LIMITS,
            concurrency=CONCURRENCY,
        )
        with ThreadPoolExecutor(2) as pool:
            naive = pool.submit(_naive, job, workdir / "naive-out")
            harvested = pool.submit(run_harvester, job)
            naive_s = naive.result()
            _, report = harvested.result()
        counters = sim.counters()
    violations = counters["codes"].get("31", 0) + counters["codes"].get("32", 0)
    harvest_s = float(report["elapsed_seconds"])
    speedup = naive_s / harvest_s
    units = COLLECTIONS * DAYS
    return [
        Figure(
            "speed-up over a naive sequential script",
            f"{speedup:.1f}x",
            f"> {GOAL:g}x",
            speedup > GOAL and violations == 0,
            f"{units} units at 5/s+60/min, latency 300 ms, time scaled x{SCALE:g}: "
            f"naive {naive_s:.1f} s, harvester {harvest_s:.1f} s; {violations} 31/32 answers",
        )
    ]


def _naive(job: Path, output: Path) -> float:
    """Run :func:`main` as a child; its elapsed seconds."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(NAIVE_KEY=NAIVE_KEY, NAIVE_SECRET=NAIVE_SECRET)
    args = [sys.executable, "-m", "tests.benchmarks.baseline", str(job), str(output)]
    child = run_child(args, env=env)
    if child.exit_code != 0:
        raise RuntimeError(f"the naive script exited {child.exit_code}:\n{child.stderr[-3000:]}")
    elapsed: float = json.loads(child.stdout)["elapsed"]
    return elapsed


def main(job_path: str, output: str) -> None:
    """The naive script: call, sleep, repeat; write everything at the end."""
    job = load_job(Path(job_path))
    key, secret = os.environ["NAIVE_KEY"], os.environ["NAIVE_SECRET"]
    pause = max(limit.seconds / limit.calls for limit in job.api.rate_limits)
    pages: list[dict[str, object]] = []
    collections: list[dict[str, object]] = []
    started = time.perf_counter()
    for unit in iter_units(job):
        params = {
            "action": GET_STATS,
            "apiKey": key,
            "collectionHash": unit.collection_hash,
            "startDate": unit.start.isoformat(),
            "endDate": unit.end.isoformat(),
            "includePageStats": "true",
        }
        params["signature"] = sign(params, secret)
        with urllib.request.urlopen(f"{job.api.base_url}?{urlencode(params)}", timeout=30) as r:
            answer = json.loads(r.read())
        if answer["code"] != 20:
            raise RuntimeError(f"{unit}: code {answer['code']}")
        data = answer["data"]
        row = {
            "collection_hash": unit.collection_hash,
            "period_start": unit.start,
            "period_end": unit.end,
        }
        collections.append(
            {**row, **{k: data[k] for k in ("impressions", "views", "time_spent", "downloads")}}
        )
        pages.extend({**row, **page} for page in data["pages"])
        time.sleep(pause)
    Path(output).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(pages), Path(output) / "page_stats.parquet")
    pq.write_table(pa.Table.from_pylist(collections), Path(output) / "collection_stats.parquet")
    print(json.dumps({"elapsed": time.perf_counter() - started, "units": len(collections)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
