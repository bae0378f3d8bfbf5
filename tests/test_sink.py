"""The Parquet datasets: schemas, partition layout, upserts, atomic replace, temp files."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from harvester.lake.dataset import read_dataset
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import (
    COLLECTION_SCHEMA,
    COLLECTION_STATS,
    PAGE_SCHEMA,
    PAGE_STATS,
    WriteResult,
    partitioning,
)
from harvester.model import Fetched, Unit

JAN1, FEB1 = date(2026, 1, 1), date(2026, 2, 1)
AT = datetime(2026, 2, 3, 4, 5, 6, 123456, tzinfo=UTC)
LATER = AT + timedelta(days=1)
TS = pa.timestamp("us", tz="UTC")


def fetched(
    hash_: str, start: date = JAN1, *, days: int = 0, pages: int = 2, views: int = 5
) -> Fetched:
    """An answer with distinctive figures; its last page is all zeros."""
    zero = ((pages, 0, 0, 0),) if pages else ()
    rows = (*((p, views + p, p, 100 * p) for p in range(1, pages)), *zero)
    return Fetched(Unit(hash_, start, start + timedelta(days=days)), AT, 9, views, 2**40, 2, rows)


def page_rows(r: Fetched) -> list[dict[str, Any]]:
    """The page_stats rows ``r`` must produce."""
    u = r.unit
    return [
        {
            "collection_hash": u.collection_hash,
            "period_start": u.start,
            "period_end": u.end,
            "page": page,
            "views": views,
            "clicks": clicks,
            "time_spent": spent,
            "fetched_at": r.fetched_at,
            "account": "default",
        }
        for page, views, clicks, spent in r.pages
    ]


def collection_row(r: Fetched) -> dict[str, Any]:
    """The collection_stats row ``r`` must produce."""
    u = r.unit
    return {
        "collection_hash": u.collection_hash,
        "period_start": u.start,
        "period_end": u.end,
        "impressions": r.impressions,
        "views": r.views,
        "time_spent": r.time_spent,
        "downloads": r.downloads,
        "fetched_at": r.fetched_at,
        "account": "default",
        "complete": u.start == u.end,  # the sink's default granularity is day
        "pages_requested": r.pages_requested,
        "page_count": len(r.pages),
    }


def expected(results: list[Fetched]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both datasets' rows for ``results``, in read_dataset's order."""
    ordered = sorted(results, key=lambda r: r.unit)
    return [row for r in ordered for row in page_rows(r)], [collection_row(r) for r in ordered]


def part(output: Path, name: str, start: date = JAN1) -> Path:
    """The one file of a partition."""
    return output / name / f"period_start={start.isoformat()}" / "part-0.parquet"


def assert_datasets(output: Path, results: list[Fetched]) -> None:
    """Both datasets hold exactly the rows of ``results``, with the full schemas."""
    pages, collections = expected(results)
    page_table = read_dataset(output, PAGE_STATS)
    collection_table = read_dataset(output, COLLECTION_STATS)
    assert page_table.schema == PAGE_SCHEMA
    assert collection_table.schema == COLLECTION_SCHEMA
    assert page_table.to_pylist() == pages
    assert collection_table.to_pylist() == collections


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """Where the sink writes (not created: the sink must create it)."""
    return tmp_path / "output"


@pytest.fixture
def sink(output_dir: Path) -> ParquetSink:
    """A sink over an empty output folder."""
    return ParquetSink(output_dir)


# --- schemas and layout ------------------------------------------------------------------------


def test_schemas_are_the_contract() -> None:
    unit_columns = [("collection_hash", pa.string()), ("period_start", pa.date32())]
    assert pa.schema(
        [
            *unit_columns,
            ("period_end", pa.date32()),
            ("page", pa.int32()),
            ("views", pa.int64()),
            ("clicks", pa.int64()),
            ("time_spent", pa.int64()),
            ("fetched_at", TS),
            ("account", pa.string()),
        ]
    ).equals(PAGE_SCHEMA, check_metadata=True)
    assert pa.schema(
        [
            *unit_columns,
            ("period_end", pa.date32()),
            ("impressions", pa.int64()),
            ("views", pa.int64()),
            ("time_spent", pa.int64()),
            ("downloads", pa.int64()),
            ("fetched_at", TS),
            ("account", pa.string()),
            ("complete", pa.bool_()),
            ("pages_requested", pa.bool_()),
            ("page_count", pa.int32()),
        ]
    ).equals(COLLECTION_SCHEMA, check_metadata=True)


def test_files_hold_every_column_but_the_partition(sink: ParquetSink, output_dir: Path) -> None:
    sink.write_partition(JAN1, [fetched("a")])
    for name, schema in ((PAGE_STATS, PAGE_SCHEMA), (COLLECTION_STATS, COLLECTION_SCHEMA)):
        in_file = pq.read_schema(part(output_dir, name))
        assert in_file.equals(schema.remove(1))
        assert "period_start" not in in_file.names
        column = pq.ParquetFile(part(output_dir, name)).metadata.row_group(0).column(0)
        assert column.compression == "ZSTD"


def test_round_trip_with_explicit_partitioning(sink: ParquetSink, output_dir: Path) -> None:
    results = [fetched("b"), fetched("a", days=6), fetched("a", FEB1, pages=30)]
    for start in (JAN1, FEB1):
        sink.write_partition(start, [r for r in results if r.unit.start == start])
    dataset = ds.dataset(output_dir / PAGE_STATS, format="parquet", partitioning=partitioning())
    assert dataset.schema.field("period_start").type == pa.date32()
    assert_datasets(output_dir, results)


def test_duckdb_reads_period_start_as_date(sink: ParquetSink, output_dir: Path) -> None:
    results = [fetched("a"), fetched("b", FEB1, days=27, pages=3)]
    for r in results:
        sink.write_partition(r.unit.start, [r])
    glob = f"{output_dir}/page_stats/**/*.parquet"
    pages, _ = expected(results)
    want = [(p["collection_hash"], p["period_start"], p["period_end"], p["page"]) for p in pages]
    db = duckdb.connect()
    for options in ("", ", hive_types = {'period_start': 'DATE'}"):  # autodetected, explicit
        query = f"FROM read_parquet('{glob}', hive_partitioning = true{options})"
        assert db.sql(f"SELECT DISTINCT typeof(period_start) {query}").fetchall() == [("DATE",)]
        rows = db.sql(
            f"SELECT collection_hash, period_start, period_end, page {query} ORDER BY ALL"
        ).fetchall()
        assert rows == want


# --- rows ---------------------------------------------------------------------------------------


def test_rows_are_sorted_by_unit_and_page(sink: ParquetSink, output_dir: Path) -> None:
    results = [fetched("c"), fetched("a", days=3, pages=12), fetched("b"), fetched("a")]
    sink.write_partition(JAN1, results)
    file = pq.read_table(part(output_dir, PAGE_STATS))
    keys = [
        tuple(row.values())
        for row in file.select(["collection_hash", "period_end", "page"]).to_pylist()
    ]
    assert keys == sorted(keys) and len(keys) == 2 + 12 + 2 + 2
    hashes = pq.read_table(part(output_dir, COLLECTION_STATS))["collection_hash"].to_pylist()
    assert hashes == ["a", "a", "b", "c"]


def test_all_zero_pages_are_rows(sink: ParquetSink, output_dir: Path) -> None:
    r = fetched("a", pages=1)
    assert r.pages == ((1, 0, 0, 0),)
    assert sink.write_partition(JAN1, [r]) == WriteResult(page_rows=1, collection_rows=1, files=2)
    assert_datasets(output_dir, [r])


def test_zero_page_unit_has_a_collection_row_only(sink: ParquetSink, output_dir: Path) -> None:
    r = fetched("a", pages=0)._replace(impressions=0, views=0, time_spent=0, downloads=0)
    assert sink.write_partition(JAN1, [r]) == WriteResult(page_rows=0, collection_rows=1, files=1)
    assert not part(output_dir, PAGE_STATS).exists()
    assert_datasets(output_dir, [r])


def test_fetched_at_keeps_microseconds_and_the_instant(sink: ParquetSink, output_dir: Path) -> None:
    from zoneinfo import ZoneInfo

    r = fetched("a")._replace(fetched_at=AT.astimezone(ZoneInfo("Europe/Bucharest")))
    sink.write_partition(JAN1, [r])
    (at,) = read_dataset(output_dir, COLLECTION_STATS)["fetched_at"].to_pylist()
    assert at == AT and at.utcoffset() == timedelta(0)


def test_units_outside_the_partition_are_refused(sink: ParquetSink) -> None:
    with pytest.raises(ValueError, match="outside partition 2026-02-01"):
        sink.write_partition(FEB1, [fetched("a", FEB1), fetched("b", JAN1)])


def test_nothing_to_write_writes_nothing(sink: ParquetSink, output_dir: Path) -> None:
    assert sink.write_partition(JAN1, []) == WriteResult(0, 0, 0)
    assert not output_dir.exists()


# --- upserts ------------------------------------------------------------------------------------


def test_same_unit_twice_keeps_one_set_of_rows(sink: ParquetSink, output_dir: Path) -> None:
    first = fetched("a", pages=3)
    second = fetched("a", pages=3, views=50)._replace(fetched_at=LATER)
    sink.write_partition(JAN1, [first])
    assert sink.write_partition(JAN1, [second]) == WriteResult(3, 1, 2)
    assert_datasets(output_dir, [second])


def test_same_unit_twice_in_one_call_keeps_the_last(sink: ParquetSink, output_dir: Path) -> None:
    last = fetched("a", views=50)
    assert sink.write_partition(JAN1, [fetched("a"), last]) == WriteResult(2, 1, 2)
    assert_datasets(output_dir, [last])


def test_pages_that_disappeared_disappear(sink: ParquetSink, output_dir: Path) -> None:
    sink.write_partition(JAN1, [fetched("a", pages=5)])
    fewer = fetched("a", pages=2, views=1)
    sink.write_partition(JAN1, [fewer])
    assert_datasets(output_dir, [fewer])


def test_other_units_are_untouched(sink: ParquetSink, output_dir: Path) -> None:
    same_hash_other_end = fetched("a", days=6)
    others = [fetched("b", pages=4), same_hash_other_end, fetched("c", pages=0)]
    sink.write_partition(JAN1, [fetched("a"), *others])
    sink.write_partition(FEB1, [fetched("a", FEB1)])
    again = fetched("a", pages=3, views=70)
    assert sink.write_partition(JAN1, [again]) == WriteResult(3, 1, 2)
    assert_datasets(output_dir, [again, *others, fetched("a", FEB1)])


def test_a_partition_left_empty_has_no_file(sink: ParquetSink, output_dir: Path) -> None:
    sink.write_partition(JAN1, [fetched("a", pages=3)])
    now_empty = fetched("a", pages=0)
    assert sink.write_partition(JAN1, [now_empty]) == WriteResult(0, 1, 1)
    assert not part(output_dir, PAGE_STATS).exists()
    assert_datasets(output_dir, [now_empty])


# --- temp files and crashes ---------------------------------------------------------------------


def plant_temp_files(sink: ParquetSink, output_dir: Path) -> list[Path]:
    """Valid Parquet under temp names, as a crash right before the rename leaves them."""
    sink.write_partition(JAN1, [fetched("a")])
    temps = []
    for name in (PAGE_STATS, COLLECTION_STATS):
        temp = part(output_dir, name).with_name(".part-0.parquet.tmp")
        temp.write_bytes(part(output_dir, name).read_bytes())
        temps.append(temp)
    return temps


def test_temp_files_are_invisible_to_readers(sink: ParquetSink, output_dir: Path) -> None:
    plant_temp_files(sink, output_dir)
    assert_datasets(output_dir, [fetched("a")])
    glob = f"{output_dir}/collection_stats/**/*.parquet"
    query = f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true)"
    assert duckdb.connect().execute(query).fetchall() == [(1,)]


def test_cleanup_removes_temp_files(sink: ParquetSink, output_dir: Path) -> None:
    temps = plant_temp_files(sink, output_dir)
    assert sink.cleanup() == 2
    assert not any(t.exists() for t in temps)
    assert sink.cleanup() == 0
    assert ParquetSink(output_dir / "never-written").cleanup() == 0
    assert_datasets(output_dir, [fetched("a")])


def test_a_failed_rename_leaves_the_old_file(
    sink: ParquetSink, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = [fetched("a"), fetched("b")]
    sink.write_partition(JAN1, old)
    before = {name: part(output_dir, name).read_bytes() for name in (PAGE_STATS, COLLECTION_STATS)}

    def crash(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        sink.write_partition(JAN1, [fetched("a", views=99, pages=7)])
    monkeypatch.undo()
    for name, content in before.items():
        assert part(output_dir, name).read_bytes() == content
        assert [p.name for p in part(output_dir, name).parent.iterdir()] == ["part-0.parquet"]
    assert_datasets(output_dir, old)


class _FsPath:
    """A path-like object that is not a pathlib.Path."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __fspath__(self) -> str:
        return str(self._path)


def test_read_dataset_takes_a_string_or_any_path(
    sink: ParquetSink, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the README shows: ``read_dataset("output", "page_stats")``."""
    results = [fetched("a"), fetched("b", FEB1)]
    for start in (JAN1, FEB1):
        sink.write_partition(start, [r for r in results if r.unit.start == start])
    pages, collections = expected(results)
    assert read_dataset(str(output_dir), PAGE_STATS).to_pylist() == pages
    assert read_dataset(_FsPath(output_dir), COLLECTION_STATS).to_pylist() == collections
    monkeypatch.chdir(output_dir.parent)
    assert read_dataset("output", PAGE_STATS).to_pylist() == pages
    assert read_dataset("missing", PAGE_STATS).num_rows == 0
    with pytest.raises(ValueError, match="unknown dataset 'pages': expected one of page_stats"):
        read_dataset(output_dir, "pages")
