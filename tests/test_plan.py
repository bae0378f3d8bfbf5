"""The planner: windows per granularity, clipping, batch order, counting, speed and memory."""

from __future__ import annotations

import time
import tracemalloc
from collections import deque
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.job.model import Collection, Job
from harvester.model import Unit
from harvester.plan.windows import count_units, iter_units, iter_windows

D = date.fromisoformat


def make_job(granularity: str, *ranges: tuple[str, str]) -> Job:
    """A job with one collection per ``(start, end)``, hashed c0, c1, ..."""
    collections = tuple(Collection(f"c{i}", D(a), D(b)) for i, (a, b) in enumerate(ranges))
    return Job(Path("job.yaml"), collections, granularity=granularity)


def spans(units: list[Unit]) -> list[tuple[str, str, str]]:
    """Units as plain (hash, start, end) strings, for readable assertions."""
    return [(u.collection_hash, u.start.isoformat(), u.end.isoformat()) for u in units]


def reference(job: Job) -> list[list[Unit]]:
    """The batches by brute force: every day of every collection, grouped by window."""

    def window(day: date) -> tuple[date, date]:
        if job.granularity == "day":
            return day, day
        if job.granularity == "week":
            monday = day - timedelta(days=day.weekday())
            return monday, monday + timedelta(days=6)
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return first, following - timedelta(days=1)

    if job.granularity == "range":
        starts = sorted({c.start for c in job.collections if c.start <= c.end})
        return [
            [Unit(c.hash, c.start, c.end) for c in job.collections if c.start == s] for s in starts
        ]
    batches: dict[date, list[Unit]] = {}
    for c in job.collections:
        day = c.start
        while day <= c.end:
            first, last = window(day)
            unit = Unit(c.hash, max(first, c.start), min(last, c.end))
            if unit not in batches.setdefault(first, []):
                batches[first].append(unit)
            day = min(last, c.end) + timedelta(days=1)
    return [batches[k] for k in sorted(batches)]


# --- each granularity -----------------------------------------------------------------------


def test_day_yields_one_unit_per_collection_per_day_window_major() -> None:
    job = make_job("day", ("2026-01-01", "2026-01-03"), ("2026-01-02", "2026-01-02"))
    assert [spans(b) for b in iter_windows(job)] == [
        [("c0", "2026-01-01", "2026-01-01")],
        [("c0", "2026-01-02", "2026-01-02"), ("c1", "2026-01-02", "2026-01-02")],
        [("c0", "2026-01-03", "2026-01-03")],
    ]


def test_week_is_monday_to_sunday_clipped_at_both_range_edges() -> None:
    job = make_job("week", ("2026-01-07", "2026-01-20"))  # a Wednesday to a Tuesday
    assert spans(list(iter_units(job))) == [
        ("c0", "2026-01-07", "2026-01-11"),
        ("c0", "2026-01-12", "2026-01-18"),
        ("c0", "2026-01-19", "2026-01-20"),
    ]


def test_iso_week_53_spans_the_new_year_in_one_unit() -> None:
    job = make_job("week", ("2026-12-25", "2027-01-05"))
    units = list(iter_units(job))
    assert spans(units) == [
        ("c0", "2026-12-25", "2026-12-27"),
        ("c0", "2026-12-28", "2027-01-03"),
        ("c0", "2027-01-04", "2027-01-05"),
    ]
    assert units[1].start.isocalendar()[:2] == (2026, 53)
    assert units[1].end.isocalendar()[:2] == (2026, 53)


def test_month_follows_calendar_month_ends_and_clips() -> None:
    job = make_job("month", ("2026-01-15", "2026-05-10"))
    assert spans(list(iter_units(job))) == [
        ("c0", "2026-01-15", "2026-01-31"),
        ("c0", "2026-02-01", "2026-02-28"),
        ("c0", "2026-03-01", "2026-03-31"),
        ("c0", "2026-04-01", "2026-04-30"),
        ("c0", "2026-05-01", "2026-05-10"),
    ]


def test_leap_years_get_their_29th_of_february() -> None:
    assert spans(list(iter_units(make_job("month", ("2024-02-01", "2024-03-01"))))) == [
        ("c0", "2024-02-01", "2024-02-29"),
        ("c0", "2024-03-01", "2024-03-01"),
    ]
    days = make_job("day", ("2024-02-28", "2024-03-01"), ("2100-02-28", "2100-03-01"))
    assert [u.start.isoformat() for u in iter_units(days)] == [
        "2024-02-28",
        "2024-02-29",
        "2024-03-01",
        "2100-02-28",
        "2100-03-01",
    ]  # 2100: no leap
    assert count_units(days) == 5


def test_range_is_one_unit_per_collection_batched_by_start() -> None:
    job = make_job(
        "range",
        ("2026-03-01", "2026-03-31"),
        ("2026-01-01", "2026-12-31"),
        ("2026-03-01", "2026-03-02"),
    )
    assert [spans(b) for b in iter_windows(job)] == [
        [("c1", "2026-01-01", "2026-12-31")],
        [("c0", "2026-03-01", "2026-03-31"), ("c2", "2026-03-01", "2026-03-02")],
    ]


@pytest.mark.parametrize("granularity", ["day", "week", "month", "range"])
def test_a_single_day_range_is_one_unit(granularity: str) -> None:
    job = make_job(granularity, ("2026-02-28", "2026-02-28"))
    assert spans(list(iter_units(job))) == [("c0", "2026-02-28", "2026-02-28")]
    assert count_units(job) == 1


def test_collections_with_their_own_ranges_join_and_leave_batches() -> None:
    job = make_job(
        "week",
        ("2026-01-05", "2026-01-25"),
        ("2026-01-14", "2026-01-14"),
        ("2026-03-02", "2026-03-03"),
    )
    assert [spans(b) for b in iter_windows(job)] == [
        [("c0", "2026-01-05", "2026-01-11")],
        [("c0", "2026-01-12", "2026-01-18"), ("c1", "2026-01-14", "2026-01-14")],
        [("c0", "2026-01-19", "2026-01-25")],
        [("c2", "2026-03-02", "2026-03-03")],  # the empty weeks between are skipped, not yielded
    ]


def test_batches_keep_job_file_order_not_start_order() -> None:
    job = make_job("day", ("2026-01-02", "2026-01-02"), ("2026-01-01", "2026-01-02"))
    assert [u.collection_hash for u in list(iter_windows(job))[1]] == ["c0", "c1"]


def test_the_last_days_of_the_calendar_do_not_overflow() -> None:
    for granularity in ("day", "week", "month", "range"):
        job = make_job(granularity, ("9999-12-20", "9999-12-31"))
        units = list(iter_units(job))
        assert units[-1].end == date.max
        assert len(units) == count_units(job)


def test_an_inverted_hand_built_range_plans_nothing() -> None:
    job = make_job("week", ("2026-02-01", "2026-01-01"), ("2026-01-01", "2026-01-01"))
    assert spans(list(iter_units(job))) == [("c1", "2026-01-01", "2026-01-01")]
    assert count_units(job) == 1


def test_an_unknown_granularity_is_refused() -> None:
    with pytest.raises(ValueError, match="granularity"):
        count_units(make_job("hour", ("2026-01-01", "2026-01-02")))


def test_units_print_as_hash_and_range() -> None:
    assert str(Unit("abc", D("2026-01-01"), D("2026-01-07"))) == "abc 2026-01-01..2026-01-07"


# --- against the brute-force reference ------------------------------------------------------

day_offsets = st.integers(min_value=0, max_value=800)
job_ranges = st.lists(
    st.tuples(day_offsets, st.integers(min_value=0, max_value=120)), min_size=1, max_size=8
)


@settings(max_examples=300, deadline=None)
@given(granularity=st.sampled_from(["day", "week", "month", "range"]), ranges=job_ranges)
def test_batches_match_the_reference_and_their_starts_only_increase(
    granularity: str, ranges: list[tuple[int, int]]
) -> None:
    origin = D("2023-12-01")
    job = make_job(
        granularity,
        *[
            ((origin + timedelta(a)).isoformat(), (origin + timedelta(a + n)).isoformat())
            for a, n in ranges
        ],
    )
    batches = list(iter_windows(job))
    assert batches == reference(job)
    assert all(batches), "no empty batch is yielded"
    for earlier, later in pairwise(batches):
        assert max(u.start for u in earlier) < min(u.start for u in later)
    assert count_units(job) == sum(map(len, batches)) == len(list(iter_units(job)))


# --- lazy, fast, flat memory ----------------------------------------------------------------


def big_job(collections: int, days: int, granularity: str = "day") -> Job:
    first = D("2020-01-01")
    last = first + timedelta(days=days - 1)
    hashes = (f"h{i:05d}" for i in range(collections))
    return Job(
        Path("big.yaml"), tuple(Collection(h, first, last) for h in hashes), granularity=granularity
    )


def test_a_million_units_plan_quickly() -> None:
    job = big_job(1000, 1000)
    began = time.perf_counter()
    deque(iter_units(job), maxlen=0)
    elapsed = time.perf_counter() - began
    assert count_units(job) == 1_000_000
    assert elapsed < 10, f"planning 1M units took {elapsed:.1f}s"  # a floor, not a benchmark


def test_staggered_ranges_plan_quickly() -> None:
    """Collections that each touch a few windows cost their units, not a scan of all others."""
    first = D("2000-01-01")
    job = Job(
        Path("s.yaml"),
        tuple(
            Collection(f"h{i}", first + timedelta(days=3 * i), first + timedelta(days=3 * i + 9))
            for i in range(5000)
        ),
    )
    began = time.perf_counter()
    assert sum(1 for _ in iter_units(job)) == count_units(job) == 50_000
    assert time.perf_counter() - began < 5


def test_planning_is_lazy() -> None:
    everything = tuple(Collection(f"h{i}", date.min, date.max) for i in range(10))
    job = Job(Path("all.yaml"), everything)  # 36 million units: only laziness makes this instant
    assert len(next(iter_windows(job))) == 10
    assert count_units(job) == 10 * (date.max.toordinal() - date.min.toordinal() + 1)


def test_memory_does_not_grow_with_the_number_of_windows() -> None:
    def peak(days: int) -> int:
        job = big_job(50, days)
        tracemalloc.start()
        try:
            deque(iter_units(job), maxlen=0)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(200), peak(20_000)
    assert long < short + 64 * 1024, (short, long)
