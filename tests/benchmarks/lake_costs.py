"""Figures 16-19: what a run costs on a lake of a year, and what Delta costs beside Parquet.

A daily job of 3 flipbooks over 365 days (1,095 units, 365 partitions per dataset), against
the recording simulator (limits off, no latency), written by ``harvester run`` children:

- **requests of a no-op rerun** on S3 (moto's server on loopback, every request counted at the
  server): everything beyond the datasets' listing. The history must not show: no part file
  is read, whatever the lake holds.
- **a lost state, rebuilt**: the state deleted, the job run again (0 API calls). Wall time of
  the child, and how many times it reconciled (once: the plan and the progress counter share
  it), on S3 Parquet and S3 Delta.
- **a backfill to Delta beside Parquet**: the same year, from nothing, on local disk: Delta's
  wall time over Parquet's (Delta commits many partitions at once, one commit per table).
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import boto3
import yaml

from tests.benchmarks.common import (
    Child,
    Figure,
    RecordingSimulator,
    harvester_env,
    run_child,
    sim_config,
)
from tests.s3_server import CountingS3Server

DAYS = 365
HASHES = ("d3m0h45h", "x9y8z7", "f1ipb00k")
START = date(2025, 1, 1)
NOOP_GOAL = 5  # requests beyond the listing
RATIO_GOAL = 2.0  # Delta backfill wall time / Parquet's
REBUILT = "rebuilt what is done from the dataset"


def _job(path: Path, base_url: str, output: str, fmt: str) -> Path:
    job = {
        "api": {"base_url": base_url, "rate_limits": [{"calls": 1_000_000, "seconds": 1}]},
        "concurrency": 16,
        "granularity": "day",
        "format": fmt,
        "output": output,
        "start": START.isoformat(),
        "end": (START + timedelta(days=DAYS - 1)).isoformat(),
        "collections": list(HASHES),
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


def _run(job: Path, env: dict[str, str], *extra: str) -> Child:
    child = run_child([sys.executable, "-m", "harvester", "run", str(job), *extra], env=env)
    if child.exit_code != 0:
        raise RuntimeError(f"harvester exited {child.exit_code}:\n{child.stderr[-3000:]}")
    return child


def run(workdir: Path) -> list[Figure]:
    """The four figures; the outputs under ``workdir/lake-costs``."""
    folder = workdir / "lake-costs"
    folder.mkdir(parents=True, exist_ok=True)
    server = CountingS3Server()
    server.start()
    try:
        with RecordingSimulator(sim_config(enforce_limits=False)) as sim:
            return _measure(folder, sim, server)
    finally:
        server.stop()


def _measure(folder: Path, sim: RecordingSimulator, server: CountingS3Server) -> list[Figure]:
    env = {
        **harvester_env(),
        "AWS_ACCESS_KEY_ID": "AKIABENCH0001",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "XDG_CACHE_HOME": str(folder / "cache"),
    }
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIABENCH0001",
        aws_secret_access_key="bench-secret",
    )
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    figures: list[Figure] = []
    rebuilt: dict[str, tuple[Child, int]] = {}
    for fmt in ("parquet", "delta"):
        job = _job(folder / f"s3-{fmt}.yaml", sim.base_url, f"s3://{bucket}/{fmt}", fmt)
        _run(job, env, "-q")
        if fmt == "parquet":
            server.reset_counts()
            _run(job, env, "-q")
            figures.append(_noop_figure(server, bucket, fmt))
        for state in (folder / "cache").rglob("state.sqlite"):
            state.unlink()
        sim.reset()
        child = _run(job, env)
        if sim.counters()["requests"]:
            raise RuntimeError(f"a rebuilt state made API calls: {sim.counters()}")
        rebuilt[fmt] = (child, child.stderr.count(REBUILT))
    for fmt, (child, passes) in rebuilt.items():
        figures.append(
            Figure(
                f"lost state rebuilt, S3 {fmt.capitalize()}, 365 days, s",
                f"{child.wall:.1f}",
                "1 pass",
                passes == 1,
                f"{passes} reconcile pass(es), 0 API calls; whole child process (CPU"
                f" {child.cpu:.1f} s)",
            )
        )
    walls = {}
    for fmt in ("parquet", "delta"):
        job = _job(folder / f"local-{fmt}.yaml", sim.base_url, str(folder / f"local-{fmt}"), fmt)
        walls[fmt] = _run(job, env, "-q").wall
    ratio = walls["delta"] / walls["parquet"]
    figures.append(
        Figure(
            "backfill 365 days x 3, local Delta / Parquet wall",
            f"{ratio:.2f}",
            f"<= {RATIO_GOAL:g}",
            ratio <= RATIO_GOAL,
            f"Delta {walls['delta']:.1f} s, Parquet {walls['parquet']:.1f} s (whole child"
            " processes, 1,095 units, no latency)",
        )
    )
    return figures


def _noop_figure(server: CountingS3Server, bucket: str, fmt: str) -> Figure:
    """Requests beyond the listing of a rerun with nothing to do, with where they went."""
    requests = [(k, p) for k, _, p in server.requests if p.lstrip("/").startswith(bucket)]
    listing = sum(1 for k, _ in requests if k == "LIST")
    beyond = [(k, p) for k, p in requests if k != "LIST"]
    parts = sum(1 for _, p in beyond if p.endswith(".parquet"))
    where = Counter(f"{k} {_object(p)}" for k, p in beyond)
    return Figure(
        f"S3 requests beyond the listing, no-op rerun, {DAYS} partitions",
        str(len(beyond)),
        f"<= {NOOP_GOAL}",
        len(beyond) <= NOOP_GOAL and parts == 0,
        f"{listing} LIST; {parts} of part files; "
        + ", ".join(f"{what} x{n}" for what, n in sorted(where.items())),
        gates=False,
    )


def _object(path: str) -> str:
    """``output.json``, ``lock.json``, ``run report``, ``probe``, ``bucket``: what a request
    was about."""
    key = path.lstrip("/").partition("/")[2]
    if not key:
        return "bucket"  # a POST to the bucket: a (multi-object) delete
    if "/_harvester/runs/" in key:
        return "run report"
    if "/_harvester/probe/" in key:
        return "probe"
    return key.rpartition("/")[2]


def main() -> None:
    """Run these figures alone (``python -m tests.benchmarks.lake_costs``)."""
    import tempfile

    from tests.benchmarks.__main__ import table

    with tempfile.TemporaryDirectory(prefix="lake-costs-") as temp:
        print(table(run(Path(temp))))


if __name__ == "__main__":
    main()
