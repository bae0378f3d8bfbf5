"""Requests and time per partition commit on S3 (moto's server in its own process).

A sink writes 30 daily partitions of 3 collections × 13 pages, then rewrites them all (the
merge path: read with its version, write over it), through a counting loopback proxy. Each
commit is a GET, a conditional PUT and a HEAD (the listing's size and mtime for the state) per
dataset: 6 requests, new partition or rewrite. Before fenced writes it was 12 (new) and 20
(rewrite): pyarrow's HEADs, ranged GETs and a three-request multipart upload per file.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import boto3

from harvester.job.location import Location
from harvester.lake.parquet import ParquetSink
from harvester.model import Fetched, Unit
from tests.benchmarks.common import Figure
from tests.store_server import StoreProxy, moto_process

PARTITIONS = 30
GOAL_REQUESTS = 6


def _answers(day: date, salt: int) -> list[Fetched]:
    at = datetime(2026, 6, 1, tzinfo=UTC)
    pages = tuple((p, p + salt, 1, 2) for p in range(1, 14))
    return [Fetched(Unit(f"c{i}", day, day), at, 10 + salt, 5, 7, 1, pages) for i in range(3)]


def run(workdir: Path) -> list[Figure]:
    """Requests per commit (new, rewrite) and milliseconds per commit."""
    with moto_process(workdir / "moto.log") as moto, StoreProxy(moto) as proxy:
        aws = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        saved = dict(os.environ)
        os.environ.update(aws, AWS_ENDPOINT_URL=proxy.endpoint)
        try:
            figures = _measure(moto, proxy, aws)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return figures


def _measure(moto: str, proxy: StoreProxy, aws: dict[str, str]) -> list[Figure]:
    """The figures, with the environment pointing at the proxy."""
    figures = []
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=moto, **_keys(aws))
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    sink = ParquetSink(Location.parse(f"s3://{bucket}/lake"))
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(PARTITIONS)]
    for what, salt in (("new partition", 0), ("rewrite", 1)):
        proxy.seen.clear()
        started = time.perf_counter()
        for day in days:
            sink.write_partition(day, _answers(day, salt))
        elapsed = (time.perf_counter() - started) / PARTITIONS
        requests = len(proxy.seen) / PARTITIONS
        figures.append(
            Figure(
                f"S3 requests per partition commit ({what})",
                f"{requests:g}",
                f"<= {GOAL_REQUESTS}",
                requests <= GOAL_REQUESTS,
                note="GET + conditional PUT + HEAD per dataset (was 12 new, 20 rewrite)",
            )
        )
        figures.append(Figure(f"one partition commit on moto ({what})", f"{elapsed * 1000:.0f} ms"))
    return figures


def _keys(aws: dict[str, str]) -> dict[str, str]:
    return {
        "region_name": aws["AWS_REGION"],
        "aws_access_key_id": aws["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"],
    }
