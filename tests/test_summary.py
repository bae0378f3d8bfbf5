"""The summary: totals as DuckDB sums them, gaps named as date ranges, and a readable chart."""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from harvester.errors import UsageError
from harvester.job.parse import load_job
from harvester.lake.parquet import ParquetSink
from harvester.model import Fetched, Unit
from harvester.ops.chart import write_chart
from harvester.ops.summary import (
    Coverage,
    Gap,
    PageTotals,
    Summary,
    coverage,
    infer_granularity,
    render,
    summarize,
)
from harvester.run.options import RunOptions
from harvester.run.pipeline import harvest
from harvester.simulator import SimulatorThread
from tests.conftest import HASHES

JobFile = Callable[..., Path]
FETCHED_AT = datetime(2026, 4, 1, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def harvested(
    job_file: JobFile, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> Path:
    """The conftest job harvested from the simulator: 3 collections by day, 2026-03-01..20."""
    report = harvest(load_job(job_file()), RunOptions(), env)
    assert report.exit_code == 0, report.summary()
    return output_dir


def _duck(output: Path, dataset: str, select: str, where: str = "true") -> list[tuple[Any, ...]]:
    """A query over one dataset, read the way the README shows."""
    source = (
        f"read_parquet('{output}/{dataset}/**/*.parquet', hive_partitioning = true, "
        "hive_types = {'period_start': DATE})"
    )
    query = f"SELECT {select} FROM {source} WHERE {where} GROUP BY ALL ORDER BY 1"
    return duckdb.sql(query).fetchall()


def _totals(summary: Summary) -> list[tuple[Any, ...]]:
    return sorted(
        (c.collection_hash, c.impressions, c.views, c.time_spent, c.downloads, c.clicks)
        for c in summary.collections
    )


def _duck_totals(output: Path, where: str = "true") -> list[tuple[Any, ...]]:
    units = _duck(
        output,
        "collection_stats",
        "collection_hash, sum(impressions), sum(views), sum(time_spent), sum(downloads)",
        where,
    )
    clicks = {h: n for h, n in _duck(output, "page_stats", "collection_hash, sum(clicks)", where)}
    return [(*row, clicks[row[0]]) for row in units]


# --- totals ------------------------------------------------------------------------------------


def test_totals_equal_duckdb_sums(harvested: Path) -> None:
    summary = summarize(harvested)
    assert summary.granularity == "day" and summary.granularity_source == "output.json"
    assert _totals(summary) == _duck_totals(harvested)
    views = [c.views for c in summary.collections]
    assert views == sorted(views, reverse=True)  # most viewed first


def test_totals_within_dates_equal_duckdb_sums(harvested: Path) -> None:
    summary = summarize(harvested, since=date(2026, 3, 4), until=date(2026, 3, 10))
    where = "period_start BETWEEN DATE '2026-03-04' AND DATE '2026-03-10'"
    assert _totals(summary) == _duck_totals(harvested, where)
    by_hash = {c.collection_hash: c for c in summary.collections}
    assert HASHES[2] not in by_hash  # its range ends on 03-03
    assert by_hash[HASHES[0]].first == date(2026, 3, 4)
    assert by_hash[HASHES[0]].last == date(2026, 3, 10)
    assert str(by_hash[HASHES[0]].coverage) == "7/7 days"


def test_busiest_pages_equal_duckdb(harvested: Path) -> None:
    summary = summarize(harvested, collections=[HASHES[1]])
    (only,) = summary.collections
    rows = _duck(
        harvested,
        "page_stats",
        "page, sum(views) AS v, sum(clicks), sum(time_spent)",
        f"collection_hash = '{HASHES[1]}'",
    )
    expected = sorted(rows, key=lambda r: (-r[1], r[0]))[:3]
    assert only.top_pages == tuple(PageTotals(*r) for r in expected)


def test_views_by_period_sum_to_the_total(harvested: Path) -> None:
    for c in summarize(harvested).collections:
        assert sum(v for _, v in c.views_by_period) == c.views
        assert [d for d, _ in c.views_by_period] == [
            c.first + timedelta(days=i) for i in range((c.last - c.first).days + 1)
        ]


# --- coverage and gaps -------------------------------------------------------------------------


def _drop_days(output: Path, *days: str) -> None:
    """Delete the partition folders of these days in both datasets."""
    for dataset in ("page_stats", "collection_stats"):
        for day in days:
            shutil.rmtree(output / dataset / f"period_start={day}")


def test_gaps_are_named_as_date_ranges(harvested: Path) -> None:
    _drop_days(harvested, "2026-03-06", "2026-03-07", "2026-03-08", "2026-03-10")
    summary = summarize(harvested)
    by_hash = {c.collection_hash: c.coverage for c in summary.collections}
    gaps = (Gap(date(2026, 3, 6), date(2026, 3, 8)), Gap(date(2026, 3, 10), date(2026, 3, 10)))
    assert by_hash[HASHES[0]] == Coverage("day", 10, 14, gaps)
    assert str(by_hash[HASHES[0]]) == "10/14 days; missing 2026-03-06..2026-03-08, 2026-03-10"
    assert str(by_hash[HASHES[1]]) == "12/16 days; missing 2026-03-06..2026-03-08, 2026-03-10"
    assert by_hash[HASHES[2]].complete and str(by_hash[HASHES[2]]) == "3/3 days"
    assert {c.collection_hash for c in summary.gaps} == {HASHES[0], HASHES[1]}
    text = _rendered(summary)
    assert "gaps: 2 of 3 collections miss periods" in text
    assert f"  {HASHES[0]}: 10/14 days; missing 2026-03-06..2026-03-08, 2026-03-10" in text


def test_gaps_at_the_edges_of_the_dates_asked(harvested: Path) -> None:
    _drop_days(harvested, "2026-03-06", "2026-03-07")
    summary = summarize(harvested, collections=[HASHES[0]], since=date(2026, 3, 5))
    assert str(summary.collections[0].coverage) == "8/10 days; missing 2026-03-06..2026-03-07"
    later = summarize(harvested, collections=[HASHES[0]], since=date(2026, 3, 8))
    assert str(later.collections[0].coverage) == "7/7 days"  # the gap is before the dates asked


def _write(output: Path, windows: Sequence[tuple[str, date, date]], views: int = 10) -> None:
    """Write one unit per window, with two pages, straight through the sink."""
    sink = ParquetSink(output)
    for collection, start, end in windows:
        pages = ((1, views, 1, 5), (2, views * 2, 2, 6))
        fetched = Fetched(Unit(collection, start, end), FETCHED_AT, 1, views, 3, 1, pages)
        sink.write_partition(start, [fetched])


def test_weekly_gaps_with_clipped_weeks(tmp_path: Path) -> None:
    windows = [
        ("wk", date(2026, 2, 25), date(2026, 3, 1)),  # a week clipped to the collection's start
        ("wk", date(2026, 3, 2), date(2026, 3, 8)),
        ("wk", date(2026, 3, 9), date(2026, 3, 15)),
        ("wk", date(2026, 3, 30), date(2026, 4, 2)),  # clipped to its end
    ]
    _write(tmp_path, windows)
    summary = summarize(tmp_path)
    assert summary.granularity == "week"
    (only,) = summary.collections
    # Partial periods are present, and counted apart: the first and the last week are clipped.
    assert str(only.coverage) == "4/6 weeks (2 partial); missing 2026-03-16..2026-03-29"
    assert (only.coverage.present, only.coverage.partial) == (4, 2)
    assert [d for d, _ in only.views_by_period] == [
        date(2026, 2, 23),
        date(2026, 3, 2),
        date(2026, 3, 9),
        date(2026, 3, 30),
    ]


def test_monthly_gaps(tmp_path: Path) -> None:
    windows = [
        ("mo", date(2026, 1, 1), date(2026, 1, 31)),
        ("mo", date(2026, 4, 1), date(2026, 4, 30)),
        ("mo2", date(2026, 1, 15), date(2026, 1, 31)),  # clipped: a month all the same
        ("mo2", date(2026, 2, 1), date(2026, 2, 28)),
    ]
    _write(tmp_path, windows)
    summary = summarize(tmp_path)
    assert summary.granularity == "month"
    by_hash = {c.collection_hash: c.coverage for c in summary.collections}
    assert str(by_hash["mo"]) == "2/4 months; missing 2026-02-01..2026-03-31"
    assert str(by_hash["mo2"]) == "2/2 months (1 partial)"  # January from the 15th


def test_range_coverage_is_present_or_absent(tmp_path: Path) -> None:
    _write(tmp_path, [("r1", date(2026, 1, 1), date(2026, 3, 31))])
    summary = summarize(tmp_path)
    assert summary.granularity == "range"
    assert str(summary.collections[0].coverage) == "1/1 ranges"
    with pytest.raises(UsageError, match="range"):
        write_chart(summary, tmp_path / "chart.png", top=5)


def test_the_output_record_names_the_granularity(tmp_path: Path) -> None:
    # Two daily-looking windows a week apart: by the data a day output with a gap, but the
    # record says the output is weekly (each week clipped to one day).
    _write(tmp_path, [("wk", date(2026, 3, d), date(2026, 3, d)) for d in (2, 9)])
    inferred = summarize(tmp_path).collections[0].coverage
    assert str(inferred) == "2/8 days; missing 2026-03-03..2026-03-08"
    record = tmp_path / "_harvester" / "output.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"id": "ab" * 16, "granularity": "week", "page_stats": True}))
    summary = summarize(tmp_path)
    assert (summary.granularity, summary.granularity_source) == ("week", "output.json")
    assert str(summary.collections[0].coverage) == "2/2 weeks (2 partial)"


def test_a_broken_output_record_is_ignored(tmp_path: Path) -> None:
    _write(tmp_path, [("d", date(2026, 3, 2), date(2026, 3, 2))])
    record = tmp_path / "_harvester" / "output.json"
    record.parent.mkdir()
    for text in ("{not json", '{"granularity": "fortnight"}', "[]"):
        record.write_text(text)
        assert summarize(tmp_path).granularity_source == "the data"


@pytest.mark.parametrize(
    ("windows", "expected"),
    [
        ([], "day"),
        ([(date(2026, 3, 1), date(2026, 3, 1))], "day"),
        ([(date(2026, 3, 2), date(2026, 3, 8)), (date(2026, 3, 9), date(2026, 3, 11))], "week"),
        ([(date(2026, 3, 4), date(2026, 3, 5))], "week"),
        ([(date(2026, 3, 1), date(2026, 3, 3))], "month"),
        ([(date(2026, 1, 1), date(2026, 1, 31)), (date(2026, 2, 1), date(2026, 2, 5))], "month"),
        ([(date(2026, 1, 1), date(2026, 2, 5))], "range"),
    ],
)
def test_infer_granularity(windows: list[tuple[date, date]], expected: str) -> None:
    starts, ends = [s for s, _ in windows], [e for _, e in windows]
    assert infer_granularity(starts, ends) == expected


def test_coverage_merges_missing_periods() -> None:
    days = [date(2026, 3, d) for d in (1, 2, 5, 9, 10)]
    got = coverage("day", days)
    assert (got.present, got.expected) == (5, 10)
    assert [str(g) for g in got.gaps] == ["2026-03-03..2026-03-04", "2026-03-06..2026-03-08"]
    assert coverage("day", []).counts == "0/0 days"


# --- accounts ----------------------------------------------------------------------------------


def test_an_account_column_is_optional(tmp_path: Path) -> None:
    _write(tmp_path, [("old", date(2026, 3, 1), date(2026, 3, 1))])  # files without accounts
    for dataset, extra in (
        ("collection_stats", {}),
        ("page_stats", {"page": pa.array([1], pa.int32())}),
    ):
        figures = ["impressions", "views", "time_spent", "downloads"]
        if dataset == "page_stats":
            figures = ["views", "clicks", "time_spent"]
        columns = {
            "collection_hash": ["new"],
            "period_end": pa.array([date(2026, 3, 2)], pa.date32()),
            **extra,
            **{f: pa.array([7], pa.int64()) for f in figures},
            "fetched_at": pa.array([FETCHED_AT], pa.timestamp("us", tz="UTC")),
            "account": ["acme"],
        }
        folder = tmp_path / dataset / "period_start=2026-03-02"
        folder.mkdir(parents=True)
        pq.write_table(pa.table(columns), folder / "part-0.parquet")
    summary = summarize(tmp_path)
    assert summary.has_accounts
    assert {(c.account, c.collection_hash) for c in summary.collections} == {
        ("default", "old"),
        ("acme", "new"),
    }
    (acme,) = summarize(tmp_path, account="acme").collections
    assert (acme.collection_hash, acme.views, acme.clicks) == ("new", 7, 7)
    assert [c.collection_hash for c in summarize(tmp_path, account="default").collections] == [
        "old"
    ]
    assert "acme/new" in _rendered(summary)


# --- rendering and the chart -------------------------------------------------------------------


def _rendered(summary: Summary, top: int = 10) -> str:
    buffer = io.StringIO()
    render(summary, Console(file=buffer, width=160), top=top)
    return buffer.getvalue()


def test_render_names_every_collection_and_the_totals(harvested: Path) -> None:
    summary = summarize(harvested)
    text = _rendered(summary)
    for c in summary.collections:
        assert c.collection_hash in text and f"{c.views:,}" in text
    assert f"{sum(c.views for c in summary.collections):,}" in text  # the footer
    assert "coverage: complete" in text
    assert not any(line.endswith(" ") for line in text.splitlines())
    assert "... and 2 more collections (--top)" in _rendered(summary, top=1)


def test_render_counts_partial_periods_apart(tmp_path: Path) -> None:
    _write(
        tmp_path,
        [
            ("wk", date(2026, 2, 25), date(2026, 3, 1)),  # clipped at the job's start
            ("wk", date(2026, 3, 2), date(2026, 3, 8)),
            ("wk", date(2026, 3, 9), date(2026, 3, 11)),  # clipped at its end
        ],
    )
    text = _rendered(summarize(tmp_path))
    assert "3/3 weeks (2 partial)" in text
    assert "partial periods: 2 (their window covers only part of the week" in text
    assert "complete ones: 1)" in text and "coverage: complete" in text


def test_empty_and_missing_outputs(tmp_path: Path) -> None:
    assert summarize(tmp_path).collections == ()
    assert "no statistics here" in _rendered(summarize(tmp_path))
    with pytest.raises(UsageError, match="no such output folder"):
        summarize(tmp_path / "nope")


def test_the_chart_is_a_png_image(harvested: Path, tmp_path: Path) -> None:
    import matplotlib.image

    _drop_days(harvested, "2026-03-06")  # a gap breaks a line; the chart is still drawn
    path = tmp_path / "charts" / "summary.png"
    path.parent.mkdir()
    assert write_chart(summarize(harvested), path, top=2) == path
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(path)
    assert image.shape == (500, 1000, 4)  # 10 x 5 inches at 100 dpi, RGBA
    assert image[..., :3].std() > 0.05  # something is drawn on it
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.png"]  # no temp left


def test_the_chart_needs_matplotlib(
    harvested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(UsageError, match=r"matplotlib: pip install 'harvester\[plot\]'"):
        write_chart(summarize(harvested), tmp_path / "x.png", top=3)
    assert not (tmp_path / "x.png").exists()
