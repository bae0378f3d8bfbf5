"""Planning a million units when the dataset is the record (``-m tests.benchmarks.lake_planning``).

A lake of 1,000 collections x 1,000 days (1 M units, one ``collection_stats`` file per day) is
written once with the sink, and a state that recorded every commit. Then three dry runs:

- **steady**: the state matches the lake: one listing, every file unchanged, no data read;
- **new state**: no state at all (a new machine): the key columns of all 1,000 partitions read;
- **deleted**: the steady state after one partition was deleted by hand: one partition re-read.

Each is the best of three child processes (interpreter start-up and YAML parsing included).
Not part of ``make bench``: building the lake takes about a minute.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from harvester.job.parse import load_job
from harvester.lake.objects import NEW
from harvester.lake.output import OutputMeta, write_meta
from harvester.lake.parquet import ParquetSink
from harvester.model import Fetched, RateLimit
from harvester.plan.windows import iter_windows
from harvester.state.store import StateStore, default_state_path
from tests.benchmarks.common import Child, run_harvester, write_job

COLLECTIONS, DAYS, ROUNDS = 1000, 1000, 3


def build(workdir: Path) -> Path:
    """The job file; its output holds every unit, and its state recorded every commit."""
    output = workdir / "lake"
    job_path = write_job(
        workdir / "lake.yaml",
        "http://127.0.0.1:9/v1/",
        output,
        collections=COLLECTIONS,
        days=DAYS,
        limits=(RateLimit(5, 1.0),),
        concurrency=4,
        page_stats=False,
    )
    write_lake(job_path, output)
    return job_path


def write_lake(job_path: Path, output: Path, every: int = 1) -> None:
    """Commit every ``every``-th unit of each day of the job, as runs would."""
    job = load_job(job_path)
    sink = ParquetSink(output)
    meta = OutputMeta(id="bench", granularity="day", page_stats=job.page_stats)
    write_meta(sink.objects, sink.location, meta, expect=NEW)
    with StateStore(default_state_path(output), granularity="day") as store:
        store.set_meta("output_id", "bench")
        for batch in iter_windows(job):
            after = batch[0].end + timedelta(days=1)
            fetched_at = datetime.combine(after, datetime.min.time(), UTC)
            pages = ((1, 1, 1, 1),) if job.page_stats else ()  # one page, when pages are kept
            results = [
                Fetched(u, fetched_at, 1, 1, 1, 0, pages, job.page_stats) for u in batch[::every]
            ]
            store.stage(results)
            sink.write_partition(batch[0].start, results)
            store.mark_done(batch[::every], sink.take_touched())


def best(job: Path, *extra: str) -> Child:
    runs = [run_harvester(job, "--dry-run", *extra)[0] for _ in range(ROUNDS)]
    return min(runs, key=lambda child: child.wall)


def main() -> None:
    """Build the lake (in ``argv[1]`` if given, kept afterwards), time the three dry runs."""
    keep = len(sys.argv) > 1
    workdir = Path(sys.argv[1]) if keep else Path(tempfile.mkdtemp(prefix="lake-planning-"))
    try:
        job = workdir / "lake.yaml"
        if not job.exists():
            job = build(workdir)
        steady = best(job)
        fresh = best(job, "--state", str(workdir / "none" / "state.sqlite"))
        part = next((workdir / "lake" / "collection_stats").glob("*/part-0.parquet"))
        part.unlink()
        deleted = best(job)
        for name, child in (("steady", steady), ("new state", fresh), ("deleted", deleted)):
            print(f"{name:10} {child.wall:6.2f} s  (CPU {child.cpu:.2f} s)  {child.stdout.strip()}")
    finally:
        if not keep:
            shutil.rmtree(workdir)


if __name__ == "__main__":
    sys.exit(main())
