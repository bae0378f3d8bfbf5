"""What an output holds, summed up: totals per collection, its busiest pages, its coverage.

:func:`summarize` reads the two datasets and returns numbers (a :class:`Summary`);
:func:`render` prints them as tables. Coverage is the data-quality view: for each collection,
the calendar periods (days, ISO weeks or months) present from its first period to its last,
and the missing ones named as date ranges, so that a hole in a nightly harvest shows at once.
Present periods are counted apart when they are *partial*: their window covers only part of
the calendar period (clipped by the job's dates: a rolling start, an end inside the current
week), as :func:`harvester.model.is_complete` decides and the ``complete`` column records.

The granularity comes from the output's metadata record (``_harvester/output.json``) when there
is one, else from the data: a day's window starts and ends on the same day, a week's fits one
ISO week, a month's one calendar month, and anything longer is a ``range``. Datasets without an
``account`` column belong to the account ``default``.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import reduce
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harvester.errors import BadFile, UsageError
from harvester.job.location import Location
from harvester.lake.dataset import dataset_format, read_readable, readable_meta
from harvester.lake.fs import check_reachable, open_sink
from harvester.lake.parquet import ParquetSink
from harvester.lake.schema import COLLECTION_SCHEMA, COLLECTION_STATS, PAGE_SCHEMA, PAGE_STATS
from harvester.layout import DEFAULT_ACCOUNT, META_DIR, META_FILE
from harvester.model import GRANULARITIES, is_complete, period_end, period_of
from harvester.ops.display import Column, fitted_table, print_table

__all__ = [
    "DEFAULT_TOP",
    "CollectionSummary",
    "Coverage",
    "Gap",
    "PageTotals",
    "Summary",
    "calendar_periods",
    "coverage",
    "infer_granularity",
    "render",
    "summarize",
]

OUTPUT_RECORD = Path(META_DIR) / META_FILE
ACCOUNT = "account"
TOP_PAGES = 3
DEFAULT_TOP = 10
_PLURAL = {"day": "days", "week": "weeks", "month": "months", "range": "ranges"}


@dataclass(frozen=True)
class Gap:
    """Missing periods in a row, as the inclusive date range they cover."""

    first: date
    last: date

    def __str__(self) -> str:
        if self.first == self.last:
            return self.first.isoformat()
        return f"{self.first.isoformat()}..{self.last.isoformat()}"


@dataclass(frozen=True)
class Coverage:
    """Periods present versus expected, and the gaps between."""

    granularity: str
    present: int
    expected: int
    gaps: tuple[Gap, ...] = ()
    partial: int = 0  # of present: windows covering only part of their calendar period

    @property
    def complete(self) -> bool:
        """Every expected period is there."""
        return not self.gaps

    @property
    def counts(self) -> str:
        """``28/31 days``, ``5/5 weeks (2 partial)``."""
        text = f"{self.present}/{self.expected} {_PLURAL[self.granularity]}"
        return f"{text} ({self.partial} partial)" if self.partial else text

    def __str__(self) -> str:
        if self.complete:
            return self.counts
        return f"{self.counts}; missing " + ", ".join(str(g) for g in self.gaps)


@dataclass(frozen=True)
class PageTotals:
    """One page's figures summed over the period."""

    page: int
    views: int
    clicks: int
    time_spent: int


@dataclass(frozen=True)
class CollectionSummary:
    """One collection over the period: totals, busiest pages, views per period, coverage."""

    account: str
    collection_hash: str
    first: date  # the first day of its first window present
    last: date  # the last day of its last window present
    impressions: int  # impressions, views, time_spent, downloads: from collection_stats
    views: int
    clicks: int  # from page_stats (collection_stats has no clicks)
    time_spent: int
    downloads: int
    top_pages: tuple[PageTotals, ...]  # by views, most first
    views_by_period: tuple[tuple[date, int], ...]  # calendar period's first day → views
    coverage: Coverage


@dataclass(frozen=True)
class Summary:
    """What an output holds within the asked dates, most viewed collection first."""

    output: str
    granularity: str
    granularity_source: str  # where the granularity came from: "output.json" or "the data"
    since: date | None
    until: date | None
    collections: tuple[CollectionSummary, ...]
    has_accounts: bool  # some rows belong to an account other than ``default``
    unreadable: tuple[BadFile, ...] = ()  # part files left out: truncated or not Parquet
    unreadable_hint: str = ""  # what to do about them

    @property
    def gaps(self) -> tuple[CollectionSummary, ...]:
        """The collections whose coverage is not complete."""
        return tuple(c for c in self.collections if not c.coverage.complete)


def summarize(
    output: Path | str | Location,
    *,
    since: date | None = None,
    until: date | None = None,
    collections: Sequence[str] = (),
    account: str | None = None,
) -> Summary:
    """Read ``output``'s datasets (rows whose period starts within since..until) and sum up.

    ``output`` is a folder, an object-store URI (``s3://bucket/prefix``) or a Location (a
    job's output, its ``storage:`` endpoint kept); Parquet or Delta.
    """
    location = output if isinstance(output, Location) else Location.parse(str(output))
    if location.is_local and not location.path.is_dir():
        raise UsageError(f"{output}: no such output folder")
    check_reachable(location, str(output))
    meta = readable_meta(location)
    sink = open_sink(location, dataset_format(location, meta))
    where = _where(since, until, collections)
    figures = ["impressions", "views", "time_spent", "downloads"]
    units, bad_units = _read(
        sink, COLLECTION_STATS, ["period_start", "period_end", *figures], where, since, until
    )
    pages, bad_pages = _read(
        sink, PAGE_STATS, ["page", "views", "clicks", "time_spent"], where, since, until
    )
    units, pages = _of_account(units, account), _of_account(pages, account)
    recorded = meta.granularity if meta is not None and meta.granularity in GRANULARITIES else None
    granularity = recorded or infer_granularity(
        units["period_start"].to_pylist(), units["period_end"].to_pylist()
    )
    summaries = _collections(units, pages, granularity, since, until)
    return Summary(
        output=str(output),
        granularity=granularity,
        granularity_source="output.json" if recorded else "the data",
        since=since,
        until=until,
        collections=tuple(
            sorted(summaries, key=lambda c: (-c.views, c.account, c.collection_hash))
        ),
        has_accounts=set(units[ACCOUNT].to_pylist()) - {DEFAULT_ACCOUNT} != set(),
        unreadable=tuple(bad_units + bad_pages),
        unreadable_hint=sink.unreadable_hint,
    )


# --- reading -----------------------------------------------------------------------------------


def _schema(name: str) -> pa.Schema:
    """A dataset's schema, with an ``account`` column whether its files have one or not."""
    schema: pa.Schema = {PAGE_STATS: PAGE_SCHEMA, COLLECTION_STATS: COLLECTION_SCHEMA}[name]
    if ACCOUNT not in schema.names:
        schema = schema.append(pa.field(ACCOUNT, pa.string()))
    return schema


def _read(
    sink: ParquetSink,
    name: str,
    columns: list[str],
    where: ds.Expression | None,
    since: date | None,
    until: date | None,
) -> tuple[pa.Table, list[BadFile]]:
    """Some columns of a dataset's rows ``where`` holds (only the partitions since..until are
    read), with their account (``default`` where there is none); and the part files left out
    because they cannot be read."""
    columns = [ACCOUNT, "collection_hash", *columns]
    starts = None
    if since is not None or until is not None:
        starts = [
            s
            for s in sink.list_parts(name)
            if (since is None or s >= since) and (until is None or s <= until)
        ]
    wanted = sorted(set(columns) | {"period_start"}, key=lambda c: _schema(name).names.index(c))
    table, unreadable = read_readable(sink, name, wanted, starts)
    if where is not None and table.num_rows:
        table = table.filter(where)
    table = table.select(columns)
    accounts = pc.fill_null(table[ACCOUNT], DEFAULT_ACCOUNT)
    return table.set_column(0, ACCOUNT, accounts), unreadable


def _where(
    since: date | None, until: date | None, collections: Sequence[str]
) -> ds.Expression | None:
    """The rows whose period starts within since..until, of the asked collections."""
    conditions = []
    if since is not None:
        conditions.append(pc.field("period_start") >= pa.scalar(since, pa.date32()))
    if until is not None:
        conditions.append(pc.field("period_start") <= pa.scalar(until, pa.date32()))
    if collections:
        conditions.append(pc.field("collection_hash").isin(list(collections)))
    return reduce(operator.and_, conditions) if conditions else None


def _of_account(table: pa.Table, account: str | None) -> pa.Table:
    """The rows of one account (all of them when ``account`` is None)."""
    if account is None:
        return table
    return table.filter(pc.equal(table[ACCOUNT], account))


def infer_granularity(starts: Sequence[date], ends: Sequence[date]) -> str:
    """The granularity whose calendar periods hold every window ``starts[i]..ends[i]``."""
    windows = list(zip(starts, ends, strict=True))
    if all(s == e for s, e in windows):
        return "day"
    weekly = all(period_of("week", s) == period_of("week", e) for s, e in windows)
    monthly = all(period_of("month", s) == period_of("month", e) for s, e in windows)
    if weekly and monthly:  # every window is short: a week's start on Mondays, a month's on 1sts
        mondays = any(s.weekday() == 0 or (e - s).days == 6 for s, e in windows)
        return "week" if mondays or not any(s.day == 1 for s, _ in windows) else "month"
    return "week" if weekly else "month" if monthly else "range"


# --- figures -----------------------------------------------------------------------------------

_Key = tuple[str, str]  # (account, collection_hash)


def _collections(
    units: pa.Table, pages: pa.Table, granularity: str, since: date | None, until: date | None
) -> Iterator[CollectionSummary]:
    """One summary per (account, collection) with rows in ``units``."""
    keys = [ACCOUNT, "collection_hash"]
    sums = units.group_by(keys).aggregate(
        [(c, "sum") for c in ("impressions", "views", "time_spent", "downloads")]
        + [("period_start", "min"), ("period_end", "max")]
    )
    clicks = {
        (r[ACCOUNT], r["collection_hash"]): r["clicks_sum"]
        for r in pages.group_by(keys).aggregate([("clicks", "sum")]).to_pylist()
    }
    top = _top_pages(pages)
    periods = _views_by_period(units, granularity)
    partial = _partial(units, granularity)
    for row in sums.to_pylist():
        key: _Key = (row[ACCOUNT], row["collection_hash"])
        by_period = periods[key]
        yield CollectionSummary(
            account=key[0],
            collection_hash=key[1],
            first=row["period_start_min"],
            last=row["period_end_max"],
            impressions=row["impressions_sum"],
            views=row["views_sum"],
            clicks=clicks.get(key) or 0,
            time_spent=row["time_spent_sum"],
            downloads=row["downloads_sum"],
            top_pages=top.get(key, ()),
            views_by_period=tuple(sorted(by_period.items())),
            coverage=coverage(granularity, by_period, since, until, partial=partial.get(key, 0)),
        )


def _top_pages(pages: pa.Table) -> dict[_Key, tuple[PageTotals, ...]]:
    """Each collection's TOP_PAGES pages by views over the period (lower page first on ties)."""
    sums = pages.group_by([ACCOUNT, "collection_hash", "page"]).aggregate(
        [("views", "sum"), ("clicks", "sum"), ("time_spent", "sum")]
    )
    grouped: dict[_Key, list[PageTotals]] = defaultdict(list)
    for r in sums.to_pylist():
        totals = PageTotals(r["page"], r["views_sum"], r["clicks_sum"], r["time_spent_sum"])
        grouped[(r[ACCOUNT], r["collection_hash"])].append(totals)
    return {
        key: tuple(sorted(rows, key=lambda p: (-p.views, p.page))[:TOP_PAGES])
        for key, rows in grouped.items()
    }


def _views_by_period(units: pa.Table, granularity: str) -> dict[_Key, dict[date, int]]:
    """Views per calendar period (its first day) per collection; a clipped window counts in
    the period that holds it."""
    found: dict[_Key, dict[date, int]] = defaultdict(dict)
    columns = (units[c].to_pylist() for c in (ACCOUNT, "collection_hash", "period_start", "views"))
    for account, collection, start, views in zip(*columns, strict=True):
        period = start if granularity == "range" else period_of(granularity, start)
        periods = found[(account, collection)]
        periods[period] = periods.get(period, 0) + views
    return found


def _partial(units: pa.Table, granularity: str) -> dict[_Key, int]:
    """How many of each collection's windows cover only part of their calendar period."""
    found: dict[_Key, int] = defaultdict(int)
    columns = (units[c].to_pylist() for c in (ACCOUNT, "collection_hash", "period_start"))
    ends = units["period_end"].to_pylist()
    for (account, collection, start), end in zip(zip(*columns, strict=True), ends, strict=True):
        if not is_complete(granularity, start, end):
            found[(account, collection)] += 1
    return found


def calendar_periods(granularity: str, first: date, last: date) -> Iterator[date]:
    """The first day of every calendar period from the one holding ``first`` to ``last``'s."""
    period = period_of(granularity, first)
    while period <= last:
        yield period
        end = period_end(granularity, period)
        assert end is not None  # not a range: every calendar period has an end
        period = end + timedelta(days=1)


def coverage(
    granularity: str,
    periods: Iterable[date],
    since: date | None = None,
    until: date | None = None,
    *,
    partial: int = 0,
) -> Coverage:
    """Calendar periods present (by first day) versus expected: every period from the first
    present to the last, clipped to since..until; the missing ones merged into gaps.
    ``partial``: how many of the present ones are windows covering part of their period."""
    present = sorted(set(periods))
    if granularity == "range" or not present:
        return Coverage(granularity, len(present), len(present), partial=partial)
    expected = [
        p
        for p in calendar_periods(granularity, present[0], present[-1])
        if (since is None or _end(granularity, p) >= since) and (until is None or p <= until)
    ]
    have = set(present)
    gaps: list[Gap] = []
    run: list[date] = []
    for period in [*expected, None]:  # None closes the last run
        if period is not None and period not in have:
            run.append(period)
        elif run:
            gaps.append(Gap(run[0], _end(granularity, run[-1])))
            run = []
    missing = sum(1 for p in expected if p not in have)
    return Coverage(granularity, len(expected) - missing, len(expected), tuple(gaps), partial)


def _end(granularity: str, period: date) -> date:
    """The last day of a calendar period that is not a range."""
    end = period_end(granularity, period)
    assert end is not None
    return end


# --- rendering ---------------------------------------------------------------------------------


def render(summary: Summary, console: Console, *, top: int = DEFAULT_TOP) -> None:
    """Print the header, the collections table, the busiest pages and the gaps."""
    say = _printer(console)
    say(_header(summary))
    for bad in summary.unreadable:
        say(f"unreadable part file, left out: {bad.path} ({bad.reason}); {summary.unreadable_hint}")
    if not summary.collections:
        say("no statistics here (none within the dates, collections and account asked)")
        return
    shown = summary.collections[:top]
    print_table(console, _collections_table(summary, shown, console))
    if len(summary.collections) > len(shown):
        say(f"... and {len(summary.collections) - len(shown)} more collections (--top)")
    if any(c.top_pages for c in shown):
        print_table(console, _pages_table(summary, shown, console))
    partial = sum(c.coverage.partial for c in summary.collections)
    if partial:
        say(
            f"partial periods: {partial} (their window covers only part of the"
            f" {summary.granularity}: clipped by the job's dates; complete ones:"
            f" {sum(c.coverage.present for c in summary.collections) - partial})"
        )
    if not summary.gaps:
        say(
            f"coverage: complete (every {summary.granularity} from each collection's first to last)"
        )
        return
    say(f"gaps: {len(summary.gaps)} of {len(summary.collections)} collections miss periods")
    for c in summary.gaps:
        say(f"  {_name(summary, c)}: {c.coverage}")


def _printer(console: Console) -> Callable[[str], None]:
    """Print plain text: no markup, no highlighting (hashes or paths may hold brackets)."""
    return lambda text: console.print(Text(text), soft_wrap=True)


def _header(summary: Summary) -> str:
    """``output: 3 collections, 2026-01-01..2026-03-31, by day (from the data)``."""
    count = len(summary.collections)
    where = f"{summary.output}: {count} collection{'' if count == 1 else 's'}"
    if summary.collections:
        first = min(c.first for c in summary.collections)
        last = max(c.last for c in summary.collections)
        where += f", {first.isoformat()}..{last.isoformat()}"
    where += f", by {summary.granularity} (from {summary.granularity_source})"
    if summary.since or summary.until:
        since = summary.since.isoformat() if summary.since else "…"
        until = summary.until.isoformat() if summary.until else "…"
        where += f"; periods starting {since}..{until}"
    return where


def _name(summary: Summary, c: CollectionSummary) -> str:
    """A collection as shown: its hash, with its account when the data has accounts."""
    return f"{c.account}/{c.collection_hash}" if summary.has_accounts else c.collection_hash


_FIGURES = ("impressions", "views", "clicks", "time_spent", "downloads")
_PADDING, _TIGHT = (0, 1), (0, 1, 0, 0)  # a narrow console: one space fewer between columns


def _collections_table(
    summary: Summary, shown: Sequence[CollectionSummary], console: Console
) -> Table:
    """A row per collection; a footer with the totals over every collection. Narrow, the
    first and last days go first, then the coverage (the gaps are listed below anyway)."""
    many = len(summary.collections) > 1
    everything = summary.collections
    columns = [
        Column(
            "collection", [Text(_name(summary, c)) for c in shown], footer=f"all {len(everything)}"
        ),
        Column("first", [c.first.isoformat() for c in shown]),
        Column("last", [c.last.isoformat() for c in shown]),
        Column(
            "coverage",
            [
                Text(c.coverage.counts, style="" if c.coverage.complete else "bold red")
                for c in shown
            ],
        ),
    ]
    for figure in _FIGURES:
        total = sum(getattr(c, figure) for c in everything)
        columns.append(
            Column(
                figure.replace("_", " "),
                [f"{getattr(c, figure):,}" for c in shown],
                numeric=True,
                footer=f"{total:,}" if many else None,
            )
        )

    def make(tight: bool) -> Table:
        return Table(
            title="Collections",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            show_footer=many,
            title_justify="left",
            padding=_TIGHT if tight else _PADDING,
        )

    return fitted_table(console, make, columns, drop=("first", "last", "coverage"))


def _pages_table(summary: Summary, shown: Sequence[CollectionSummary], console: Console) -> Table:
    """Each shown collection's busiest pages."""
    rows = [(c, i, p) for c in shown for i, p in enumerate(c.top_pages)]
    columns = [
        Column("collection", [Text(_name(summary, c) if i == 0 else "") for c, i, _ in rows]),
        Column("page", [str(p.page) for _, _, p in rows], numeric=True),
        Column("views", [f"{p.views:,}" for _, _, p in rows], numeric=True),
        Column("clicks", [f"{p.clicks:,}" for _, _, p in rows], numeric=True),
        Column("time spent", [f"{p.time_spent:,}" for _, _, p in rows], numeric=True),
    ]

    def make(tight: bool) -> Table:
        return Table(
            title=f"Busiest pages (top {TOP_PAGES} by views)",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            title_justify="left",
            padding=_TIGHT if tight else _PADDING,
        )

    return fitted_table(console, make, columns)
