"""``format: iceberg``: both datasets as Iceberg tables in a catalog, locally and on the S3 server.

Read back exactly with pyiceberg's scan and with DuckDB over the scan's files; after a kill -9,
after a refresh and after ``maintain``; a new or lost state makes no call; the output holds one
format; a commit that lost to another writer is redone.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from harvester.errors import JobError
from harvester.job.location import Location
from harvester.job.model import CatalogSettings, Job
from harvester.job.parse import load_job, parse_data
from harvester.lake.catalog import open_catalog, table_uri
from harvester.lake.dataset import read_dataset
from harvester.lake.iceberg import OWN_SNAPSHOTS_KEPT, IcebergSink
from harvester.lake.schema import ACCOUNT, COLLECTION_STATS, PAGE_STATS, SCHEMAS
from harvester.layout import META_DIR, STATE_DIR
from harvester.model import Fetched, Unit
from harvester.ops.maintain import maintain_output
from harvester.ops.summary import summarize
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import API_KEY, API_SECRET, expected_rows, run_cli
from tests.test_lake import (
    ACCESS_KEY,
    SECRET,
    bucket,
    cached_state,
    lake_job,
    report_of,
    s3_env,
    s3_server,
)
from tests.test_resume import LIMITS, Runs, served_at_least, successes, wait_until

__all__ = ["bucket", "lake_job", "s3_env", "s3_server"]  # fixtures shared with test_lake

Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """Enough latency for a kill to land mid-run."""
    return SimulatorConfig(
        seed=11, keys={API_KEY: API_SECRET}, rate_limits=LIMITS, latency=(0.005, 0.05)
    )


@pytest.fixture
def iceberg_runs(tmp_path: Path, s3_env: dict[str, str]) -> Iterator[Runs]:
    started = Runs(tmp_path, s3_env)
    yield started
    started.kill_leftovers()


def output_of(where: str, tmp_path: Path, bucket: str, name: str) -> tuple[str, dict[str, Any]]:
    """An output and the job keys it needs: a local folder alone, or S3 with its catalog."""
    if where == "local":
        return str(tmp_path / name), {"format": "iceberg"}
    catalog = {"uri": f"sqlite:///{tmp_path / 'catalogs' / f'{name}.db'}"}
    return f"s3://{bucket}/{name}", {"format": "iceberg", "catalog": catalog}


def tables(job: Job) -> dict[str, Table]:
    """The job's two tables, loaded from its catalog as any pyiceberg reader would."""
    sink = IcebergSink(job.output, catalog=job.catalog)
    assert sink.settings is not None
    catalog = open_catalog(sink.settings, job.output, create=False)
    assert isinstance(catalog, Catalog)
    namespace = sink.settings.namespace
    return {name: catalog.load_table((namespace, name)) for name in (PAGE_STATS, COLLECTION_STATS)}


def _rows(records: list[dict[str, Any]], name: str) -> list[tuple[Any, ...]]:
    """Rows without fetched_at and account, in the column order expected_rows uses."""
    keys = ["collection_hash", "period_start", "period_end"]
    if name == PAGE_STATS:
        keys.append("page")
        figures = ["views", "clicks", "time_spent"]
    else:
        figures = ["impressions", "views", "time_spent", "downloads"]
        figures += ["complete", "pages_requested", "page_count"]
    return sorted(tuple(r[c] for c in keys + figures) for r in records)


def scan_rows(job: Job) -> Rows:
    """What the tables hold at their current snapshot, read with pyiceberg's scan."""
    found = tables(job)
    return tuple(  # type: ignore[return-value]
        _rows(found[name].scan().to_arrow().to_pylist(), name)
        for name in (PAGE_STATS, COLLECTION_STATS)
    )


def duckdb_rows(job: Job) -> Rows:
    """The same, read by DuckDB from the files the scan plans (never a glob of the folder)."""
    out: list[list[tuple[Any, ...]]] = []
    for name, table in tables(job).items():
        files = [task.file.file_path for task in table.scan().plan_files()]
        con = duckdb.connect()
        if job.output.is_local:
            relation = con.sql("SELECT * FROM read_parquet($files)", params={"files": files})
        else:  # no httpfs offline: a pyarrow dataset over the same S3 endpoint, handed to DuckDB
            fs = pafs.S3FileSystem(
                endpoint_override=table.io.properties["s3.endpoint"],
                access_key=ACCESS_KEY,
                secret_key=SECRET,
                region="us-east-1",
            )
            keys = [f.removeprefix("s3://") for f in files]
            con.register("live", ds.dataset(keys, format="parquet", filesystem=fs))
            relation = con.sql("SELECT * FROM live")
        columns = relation.columns
        out.append(_rows([dict(zip(columns, r, strict=True)) for r in relation.fetchall()], name))
    return out[0], out[1]


def library_rows(job: Job) -> Rows:
    """What ``harvester.read_dataset`` returns for the output."""
    return tuple(  # type: ignore[return-value]
        _rows(read_dataset(job.output, name).to_pylist(), name)
        for name in (PAGE_STATS, COLLECTION_STATS)
    )


def data_files(job: Job) -> int:
    """Parquet files under the tables' folders, live or not."""
    fs, count = job.output.filesystem(), 0
    for name in (PAGE_STATS, COLLECTION_STATS):
        selector = pafs.FileSelector(job.output.join(name, "data"), recursive=True)
        count += sum(1 for i in fs.get_file_info(selector) if i.path.endswith(".parquet"))
    return count


@pytest.mark.parametrize("where", ["local", "s3"])
def test_iceberg_tables_read_back_exactly_and_a_new_or_lost_state_makes_no_call(
    where: str,
    lake_job: Callable[..., Path],
    bucket: str,
    s3_env: dict[str, str],
    sim_config: SimulatorConfig,
    tmp_path: Path,
) -> None:
    output, keys = output_of(where, tmp_path, bucket, "ice")
    path = lake_job(output, **keys)
    job = load_job(path)
    first = run_cli("run", str(path), env=s3_env)
    assert first.returncode == 0, first.stderr
    expected = expected_rows(job, sim_config)
    assert scan_rows(job) == expected
    assert duckdb_rows(job) == expected
    assert library_rows(job) == expected
    meta = json.loads(job.output.filesystem().open_input_stream(
        job.output.join(META_DIR, "output.json")).read())  # fmt: skip
    assert meta["format"] == "iceberg"
    assert SECRET not in first.stdout + first.stderr

    # A new machine: an empty state elsewhere knows nothing, the tables' metadata everything.
    fresh = tmp_path / "fresh" / "state.sqlite"
    new = run_cli("run", str(path), "--state", str(fresh), env=s3_env)
    assert report_of(new, fresh)["requests"] == 0, new.stderr
    assert "rebuilt what is done from the dataset" in new.stderr
    # The default state deleted: the same.
    state = (
        Path(output) / STATE_DIR / "state.sqlite"
        if where == "local"
        else cached_state(output, s3_env)
    )
    shutil.rmtree(state.parent)
    lost = run_cli("run", str(path), env=s3_env)
    assert report_of(lost, state)["requests"] == 0, lost.stderr
    assert scan_rows(job) == expected

    summary = run_cli("summary", output, env=s3_env)
    assert summary.returncode == 0, summary.stderr
    totals = summarize(output)
    assert sum(c.views for c in totals.collections) == sum(r[4] for r in expected[1])
    verified = run_cli("verify", output, "--state", str(fresh), env=s3_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "the dataset and the state agree" in verified.stdout

    # The output holds one format: a Parquet (or Delta) job on it is refused before any request.
    for other in ("parquet", "delta"):
        refused = run_cli("run", str(lake_job(output, format=other)), env=s3_env)
        assert refused.returncode == 2, refused.stderr
        assert "holds iceberg datasets" in refused.stderr


@pytest.mark.parametrize("where", ["local", "s3"])
def test_iceberg_after_kill_9_and_after_a_refresh_is_exact_and_maintain_expires_snapshots(
    where: str,
    lake_job: Callable[..., Path],
    bucket: str,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    iceberg_runs: Runs,
    tmp_path: Path,
    s3_env: dict[str, str],
) -> None:
    hashes = [{"hash": h} for h in ("d3m0h45h", "x9y8z7", "f1ipb00k")]
    output, keys = output_of(where, tmp_path, bucket, "killed")
    path = lake_job(output, start="2026-01-01", end="2026-01-14", collections=hashes, **keys)
    job = load_job(path)
    run = iceberg_runs.start(path)
    wait_until(served_at_least(simulator, max(20, successes(simulator) + 1)), "answers", run)
    run.send(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    iceberg_runs.complete(path)
    expected = expected_rows(job, sim_config)
    assert scan_rows(job) == expected
    snapshot = tables(job)[COLLECTION_STATS].current_snapshot()
    assert snapshot is not None

    iceberg_runs.complete(path, "--refresh")
    assert scan_rows(job) == expected  # replaced, not duplicated
    assert duckdb_rows(job) == expected
    assert library_rows(job) == expected
    # The folders still hold the replaced files: only the table says which are live.
    live = sum(len(list(t.scan().plan_files())) for t in tables(job).values())
    assert data_files(job) > live
    assert tables(job)[COLLECTION_STATS].current_snapshot() != snapshot

    said = run_cli("maintain", output, env=s3_env)  # a week's retention: these are all younger
    assert said.returncode == 0, said.stderr
    assert "collection_stats: expired 0 snapshots" in said.stdout
    before = {name: len(t.metadata.snapshots) for name, t in tables(job).items()}
    assert min(before.values()) > 1
    later = datetime.now(UTC) + timedelta(hours=2)  # as if two hours had passed
    lines = maintain_output(output, 1, now=later)
    after = {name: t.metadata for name, t in tables(job).items()}
    for name, metadata in after.items():
        assert [s.snapshot_id for s in metadata.snapshots] == [metadata.current_snapshot_id]
        assert f"{name}: expired {before[name] - 1} snapshots" in "\n".join(lines)
        assert len(metadata.metadata_log) <= 20  # older metadata files deleted on commit
    assert scan_rows(job) == expected
    again = run_cli("run", str(path), env=s3_env)
    assert again.returncode == 0, again.stderr
    assert scan_rows(job) == expected


def test_a_job_names_its_catalog_and_keeps_its_secrets(
    lake_job: Callable[..., Path], bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    # An object-store output without a catalog: refused, with what to write.
    bare = run_cli("run", str(lake_job(f"s3://{bucket}/x", format="iceberg")), env=s3_env)
    assert bare.returncode == 2
    assert "catalog: format: iceberg on s3:// needs a catalog named here" in bare.stderr
    # A password in the job file: refused without echoing it.
    uri = "postgresql://harvest:pw-9f3e-never-shown@db.internal/catalog"
    leaked = run_cli("run", str(lake_job(str(tmp_path / "p"), format="iceberg",
                                         catalog={"uri": uri})), env=s3_env)  # fmt: skip
    assert leaked.returncode == 2
    assert "secrets: {uri: VARIABLE}" in leaked.stderr
    assert "pw-9f3e" not in leaked.stdout + leaked.stderr
    # A catalog block on a Parquet job means a mistake.
    parquet = run_cli("run", str(lake_job(str(tmp_path / "q"), catalog={"uri": "sqlite:///x"})))
    assert parquet.returncode == 2
    assert "only with format: iceberg" in parquet.stderr
    # A REST catalog whose token is in the environment, and which cannot be reached: exit 74,
    # named, before any request, and the token nowhere.
    token = "tok-51d2-never-printed"
    rest = {"type": "rest", "uri": "http://127.0.0.1:9", "secrets": {"token": "ICE_TOKEN"}}
    job = lake_job(str(tmp_path / "r"), format="iceberg", catalog=rest)
    down = run_cli("run", str(job), env={**s3_env, "ICE_TOKEN": token})
    assert down.returncode == 74, down.stderr
    assert "the rest catalog http://127.0.0.1:9" in down.stderr
    assert token not in down.stdout + down.stderr
    assert "Traceback" not in down.stderr
    missing = run_cli("run", str(job), env=s3_env)
    assert missing.returncode == 2
    assert "ICE_TOKEN" in missing.stderr


def test_two_outputs_in_one_namespace_or_a_lost_catalog_are_refused(
    lake_job: Callable[..., Path],
    simulator: SimulatorThread,
    s3_env: dict[str, str],
    tmp_path: Path,
) -> None:
    shared = {"uri": f"sqlite:///{tmp_path / 'shared.db'}"}
    first = lake_job(str(tmp_path / "a"), format="iceberg", catalog=shared)
    assert run_cli("run", str(first), env=s3_env).returncode == 0
    second = lake_job(str(tmp_path / "b"), format="iceberg", catalog=shared)
    refused = run_cli("run", str(second), env=s3_env)
    assert refused.returncode == 2
    assert "give this output its own namespace" in refused.stderr
    own = lake_job(str(tmp_path / "b"), format="iceberg", catalog={**shared, "namespace": "b"})
    assert run_cli("run", str(own), env=s3_env).returncode == 0
    # The catalog lost (or another named): the tables are not made anew over the old ones.
    (tmp_path / "shared.db").unlink()
    served = successes(simulator)
    lost = run_cli("run", str(first), env=s3_env)
    assert lost.returncode == 2, lost.stderr
    assert "holds an Iceberg table that the sql catalog" in lost.stderr
    assert "register_table" in lost.stderr
    assert successes(simulator) == served  # refused before any request


# --- two writers on one table ------------------------------------------------------------------


def _answers(day: date, *hashes: str, views: int = 1) -> list[Fetched]:
    """One answer per collection for ``day``, two pages each."""
    at = datetime(2026, 2, 1, tzinfo=UTC)
    pages = ((1, views, 1, 1), (2, views, 2, 2))
    return [Fetched(Unit(h, day, day), at, 1, views, 1, 1, pages) for h in hashes]


class _Interleaved(IcebergSink):
    """A writer whose first read of a partition is followed by another writer's commit,
    before its own: the race two hosts (or two shards) can run into."""

    def __init__(self, location: Location, meanwhile: Callable[[], None]) -> None:
        super().__init__(location)
        self._meanwhile: Callable[[], None] | None = meanwhile

    def read(self, name: str, columns: Any = None, starts: Any = None) -> Any:
        rows = super().read(name, columns, starts)
        if self._meanwhile is not None and starts is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        return rows


def _units(output: Path) -> list[tuple[str, date, int]]:
    """(hash, period_start, views) of every unit, and the page count behind it."""
    pages = read_dataset(output, PAGE_STATS).to_pylist()
    units = read_dataset(output, COLLECTION_STATS).to_pylist()
    assert len(pages) == 2 * len(units)  # two pages per unit, none lost or doubled
    return [(u["collection_hash"], u["period_start"], u["views"]) for u in units]


@pytest.mark.parametrize(
    "case", ["same partition", "another partition", "same unit, new partition"]
)
def test_a_commit_that_lost_to_another_writer_is_redone_and_no_row_is_lost_or_doubled(
    tmp_path: Path, case: str
) -> None:
    output = tmp_path / "shared"
    day, other, new = date(2026, 1, 5), date(2026, 1, 6), date(2026, 1, 9)
    IcebergSink(Location.local(output)).write_partition(day, _answers(day, "aaa", "bbb"))
    second = IcebergSink(Location.local(output))  # its own catalog connection
    mine, theirs, their_hash = {
        "same partition": (day, day, "ccc"),
        "another partition": (day, other, "ccc"),
        "same unit, new partition": (new, new, "aaa"),  # an append would double the unit
    }[case]

    def meanwhile() -> None:
        second.write_partition(theirs, _answers(theirs, their_hash, views=7))

    first = _Interleaved(Location.local(output), meanwhile)
    first.write_partition(mine, _answers(mine, "aaa", views=5))
    # Their commit touched my partition: pyiceberg refuses my stale overwrite, the sink reads the
    # partition again and redoes it. Another partition: pyiceberg rebases the commit itself.
    assert first.retries == (0 if case == "another partition" else 1)
    expected = {
        "same partition": [("aaa", day, 5), ("bbb", day, 1), ("ccc", day, 7)],
        "another partition": [("aaa", day, 5), ("bbb", day, 1), ("ccc", other, 7)],
        "same unit, new partition": [("aaa", day, 1), ("bbb", day, 1), ("aaa", new, 5)],
    }[case]
    assert sorted(_units(output)) == sorted(expected)
    # What the first writer recorded is the partition's live files, the other's commit included.
    assert first.take_touched()[(COLLECTION_STATS, mine)] == IcebergSink(
        Location.local(output)
    ).list_parts(COLLECTION_STATS).get(mine)


def test_two_writers_on_the_same_partitions_at_once_lose_no_row(tmp_path: Path) -> None:
    output = tmp_path / "busy"
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(6)]
    IcebergSink(Location.local(output)).write_partition(days[0], _answers(days[0], "seed"))
    sinks = [IcebergSink(Location.local(output)) for _ in range(2)]
    hashes = (("aaa", "bbb"), ("ccc", "ddd"))

    def write(k: int) -> None:
        for day in days:
            sinks[k].write_partition(day, _answers(day, *hashes[k], views=k + 2))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = [("seed", days[0], 1)] + [
        (h, day, k + 2) for k in range(2) for h in hashes[k] for day in days
    ]
    assert sorted(_units(output)) == sorted(expected)


def test_a_long_run_keeps_the_table_lean_and_an_older_table_gains_new_columns(
    tmp_path: Path,
) -> None:
    output = Location.local(tmp_path / "long")
    sink = IcebergSink(output)
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(OWN_SNAPSHOTS_KEPT // 2)]
    for day in days:  # per table: an append, then a delete and an append snapshot
        sink.write_partition(day, _answers(day, "aaa"))
        sink.write_partition(day, _answers(day, "aaa", views=3))
    snapshots = len(sink.table(COLLECTION_STATS).metadata.snapshots)  # type: ignore[union-attr]
    assert snapshots <= OWN_SNAPSHOTS_KEPT  # 1.5 × as many made; the sink's own ones expired
    assert sorted(_units(output.path)) == [("aaa", day, 3) for day in days]

    # A table written before a column existed: the next write adds it, old rows read null.
    older = tmp_path / "older"
    catalog = open_catalog(CatalogSettings(), Location.local(older), create=True)
    assert catalog is not None
    catalog.create_namespace("harvester")
    later = (ACCOUNT, "complete", "pages_requested", "page_count")  # columns added since
    narrow = pa.schema([f for f in SCHEMAS[COLLECTION_STATS] if f.name not in later])
    with (
        catalog.create_table_transaction(
            ("harvester", COLLECTION_STATS),
            schema=narrow,
            location=table_uri(Location.local(older), COLLECTION_STATS),
        ) as tx,
        tx.update_spec() as spec,
    ):
        spec.add_identity("period_start")
    day = days[0]
    old_row = {**dict.fromkeys(narrow.names, 1), "collection_hash": "old", "period_start": day,
               "period_end": day, "fetched_at": datetime(2026, 2, 1, tzinfo=UTC)}  # fmt: skip
    catalog.load_table(("harvester", COLLECTION_STATS)).append(
        pa.Table.from_pylist([old_row], schema=narrow)
    )
    IcebergSink(Location.local(older)).write_partition(day, _answers(day, "new"))
    rows = read_dataset(older, COLLECTION_STATS).select(["collection_hash", *later]).to_pylist()
    assert rows == [
        {"collection_hash": "new", ACCOUNT: "default", "complete": True,
         "pages_requested": True, "page_count": 2},
        {"collection_hash": "old", **dict.fromkeys(later)},
    ]  # fmt: skip


def _problems(catalog: Any, output: str = "out", fmt: str = "iceberg") -> dict[str, str]:
    """The problems the parser finds in a job with this ``catalog:`` block, by field."""
    data = {"output": output, "format": fmt, "collections": [{"hash": "abc123"}],
            "start": "2026-01-01", "end": "2026-01-02", "catalog": catalog}  # fmt: skip
    try:
        parse_data(data, "job.yaml")
    except JobError as exc:
        return {p.field: p.message for p in exc.problems}
    return {}


def test_the_catalog_block_is_checked_field_by_field_and_never_echoes_a_secret() -> None:
    settings = parse_data(
        {"output": "s3://b/p", "format": "iceberg", "collections": [{"hash": "abc123"}],
         "start": "2026-01-01", "end": "2026-01-02",
         "catalog": {"type": "rest", "uri": "https://cat.example/api", "namespace": "flip",
                     "properties": {"s3.region": "eu-central-1", "rest.sigv4-enabled": True},
                     "secrets": {"credential": "ICE_CREDENTIAL"}}},
        "job.yaml",
    ).catalog  # fmt: skip
    assert settings == CatalogSettings(
        type="rest",
        uri="https://cat.example/api",
        namespace="flip",
        properties=(("rest.sigv4-enabled", "true"), ("s3.region", "eu-central-1")),
        secrets=(("credential", "ICE_CREDENTIAL"),),
    )
    assert _problems(None) == {}  # a local output: its own SQLite catalog
    leaked = _problems({"properties": {"s3.secret-access-key": "wJalr-never-shown"}})
    assert "catalog.secrets" in leaked["catalog.properties.s3.secret-access-key"]
    assert "wJalr" not in str(leaked)
    assert (
        "not its value" in _problems({"secrets": {"token": "abc-def-123"}})["catalog.secrets.token"]
    )
    assert "catalog.type" in _problems({"type": "nessie"})
    assert "unknown key 'url'" in _problems({"url": "x"})["catalog.url"]
    assert "needs its uri" in _problems({"type": "rest"})["catalog.uri"]
    assert "needs its uri" in _problems({"namespace": "x"}, output="s3://b/p")["catalog.uri"]
    assert "local folder or to s3://" in _problems(None, output="gs://b/p")["format"]
