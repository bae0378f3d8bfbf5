"""The state store (staging, outcomes, runs) and the output lock, on real files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from harvester.errors import HarvesterError, JobError, LockedError
from harvester.lake.lock import OutputLock
from harvester.model import Fetched, Unit
from harvester.state.store import (
    CHUNK_UNITS,
    FailedUnit,
    StateStore,
    _lookup_sql,
    default_state_path,
)
from tests.conftest import done_among

JAN1 = date(2026, 1, 1)
AT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def unit(hash_: str = "abc", start: date = JAN1, days: int = 0) -> Unit:
    """A unit of ``hash_`` from ``start``, ``days`` long past its first day."""
    return Unit(hash_, start, start + timedelta(days=days))


def fetched(u: Unit, *, views: int = 7, pages: int = 2) -> Fetched:
    """An answer for ``u`` with distinctive figures and ``pages`` pages (the last all-zero)."""
    zero = ((pages, 0, 0, 0),) if pages else ()
    rows = (*((p, views * p, p, 10 * p) for p in range(1, pages)), *zero)
    return Fetched(u, AT, 11, views, 2**40, 3, rows)


def three(counts: dict[str, int]) -> tuple[int, int, int]:
    """(done, staged, failed) of a store's counts."""
    return counts["done"], counts["staged"], counts["failed"]


def mark_done(store: StateStore, units: list[Unit]) -> None:
    """Record ``units`` as fetched and written (staged first, as a run does)."""
    store.stage([fetched(u) for u in units])
    store.mark_done(units)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """A fresh state store in a folder that does not exist yet."""
    with StateStore(default_state_path(tmp_path / "output"), clock=lambda: AT) as s:
        yield s


# --- the store ---------------------------------------------------------------------------------


def test_default_state_path() -> None:
    assert default_state_path(Path("out")) == Path("out/_state/state.sqlite")


def test_new_store_is_wal_versioned_and_empty(store: StateStore) -> None:
    assert store.path.exists()
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA user_version").fetchone() == (3,)
    assert three(store.counts()) == (0, 0, 0)
    assert store.staged_periods() == []
    assert store.failed() == []


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    StateStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(HarvesterError, match="schema version 99"):
        StateStore(path)


def test_stage_staged_round_trip_is_exact(store: StateStore) -> None:
    results = [
        fetched(unit("b")),
        fetched(unit("a", days=6), pages=40),
        fetched(unit("c"), pages=0)._replace(impressions=0, views=0, time_spent=0, downloads=0),
    ]
    store.stage(results)
    assert store.staged(JAN1) == sorted(results, key=lambda r: (r.unit.collection_hash, r.unit.end))
    assert store.staged(JAN1)[0].fetched_at.tzinfo is not None
    assert store.staged(date(2026, 1, 2)) == []
    assert three(store.counts()) == (0, 3, 0)


def test_staged_periods_are_distinct_and_ascending(store: StateStore) -> None:
    starts = [date(2026, 3, 1), date(2026, 1, 1), date(2026, 2, 1)]
    store.stage([fetched(unit(h, s)) for s in starts for h in "xy"])
    assert store.staged_periods() == sorted(starts)


def test_stage_is_one_transaction(store: StateStore) -> None:
    store.stage([fetched(unit("a"))])
    # SQLite cannot bind a list: the batch fails at its last row, after the others went in.
    unbindable = fetched(unit(["z"]))  # type: ignore[arg-type]
    with pytest.raises(sqlite3.Error):
        store.stage([fetched(unit("a"), views=99), fetched(unit("b")), unbindable])
    assert store.staged(JAN1) == [fetched(unit("a"))]


def test_mark_done_drops_payload_and_leaves_staging(store: StateStore) -> None:
    results = [fetched(unit(h)) for h in "abc"]
    store.stage(results)
    store.mark_done([r.unit for r in results[:2]])
    assert store.staged(JAN1) == [results[2]]
    assert three(store.counts()) == (2, 1, 0)
    db = sqlite3.connect(store.path)
    payloads = db.execute("SELECT payload, done_at FROM units WHERE status = 'done'").fetchall()
    assert payloads == [(None, AT.isoformat())] * 2
    store.mark_done([results[2].unit])
    assert store.staged_periods() == []


def test_staging_a_done_unit_refreshes_it(store: StateStore) -> None:
    u = unit()
    store.stage([fetched(u)])
    store.mark_done([u])
    store.stage([fetched(u, views=99)])
    assert store.staged(JAN1) == [fetched(u, views=99)]
    assert done_among(store, [u]) == set()
    assert three(store.counts()) == (0, 1, 0)


def test_done_among(store: StateStore) -> None:
    units = [unit(f"c{i:04d}", JAN1 + timedelta(days=i % 7)) for i in range(1000)]
    done = units[::3]
    store.stage([fetched(u) for u in units[1::3]])  # staged is not done
    store.mark_failed(units[2], kind="network", reason="reset", attempts=6)
    mark_done(store, done)
    assert len(units) > 3 * CHUNK_UNITS  # several chunks, the last one short
    assert done_among(store, units) == set(done)
    assert done_among(store, units[1:2]) == set()
    assert done_among(store, []) == set()
    assert done_among(store, [unit("never-seen")]) == set()
    assert done_among(store, [units[0], units[0]]) == {units[0]}


def test_done_among_searches_the_primary_key(store: StateStore) -> None:
    # (a, b, c) IN (VALUES ...) would scan the whole table: a million units per lookup.
    sql = _lookup_sql(2)
    plan = " ".join(row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}", ["x"] * 4))
    assert "USING PRIMARY KEY" in plan and "SCAN u" not in plan


def test_a_shared_window_is_read_by_a_primary_key_range(store: StateStore) -> None:
    from harvester.state.store import _IN_PERIOD

    rows = store._db.execute(f"EXPLAIN QUERY PLAN {_IN_PERIOD}", ["2026-01-01"])
    plan = " ".join(row[3] for row in rows)
    assert "USING PRIMARY KEY (period=?" in plan, plan


def test_done_among_reads_shared_windows_and_scattered_units_alike(store: StateStore) -> None:
    from harvester.state.store import SHARED_PERIOD_UNITS

    day = date(2026, 2, 1)
    shared = [Unit(f"h{i}", day, day) for i in range(SHARED_PERIOD_UNITS + 3)]
    scattered = [Unit("lone", date(2026, 2, d), date(2026, 2, d)) for d in (2, 3)]
    done = shared[::2] + scattered[:1]
    mark_done(store, done)
    assert done_among(store, shared + scattered) == set(done)


def test_mark_failed_records_a_new_unit(store: StateStore) -> None:
    u = unit()
    store.mark_failed(u, kind="rejected", reason="code 42", attempts=1)
    store.mark_failed(u, kind="network", reason="reset", attempts=6)  # the last error wins
    assert store.failed() == [FailedUnit(u, "network", "reset", 6, AT.isoformat())]
    assert three(store.counts()) == (0, 0, 1)


def test_failure_does_not_downgrade_done_or_staged(store: StateStore) -> None:
    done, staged = unit("done"), unit("staged")
    store.stage([fetched(done), fetched(staged)])
    store.mark_done([done])
    for u in (done, staged):
        store.mark_failed(u, kind="timeout", reason="no answer", attempts=6)
    assert store.failed() == []
    assert done_among(store, [done]) == {done}
    assert store.staged(JAN1) == [fetched(staged)]
    db = sqlite3.connect(store.path)
    errors = db.execute("SELECT status, error_kind FROM units ORDER BY collection_hash")
    assert errors.fetchall() == [("done", "timeout"), ("staged", "timeout")]


def test_a_failed_unit_fetched_later_leaves_the_failed_list(store: StateStore) -> None:
    u = unit()
    store.mark_failed(u, kind="busy", reason="code 38", attempts=6)
    store.stage([fetched(u)])
    assert store.failed() == []
    store.mark_done([u])
    assert three(store.counts()) == (1, 0, 0)


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    path = default_state_path(tmp_path)
    with StateStore(path) as s:
        mark_done(s, [unit("done")])
        s.stage([fetched(unit("staged"))])
        s.mark_failed(unit("failed"), kind="http", reason="HTTP 503", attempts=6)
    with StateStore(path) as s:
        assert s.staged(JAN1) == [fetched(unit("staged"))]
        assert done_among(s, [unit("done"), unit("staged")]) == {unit("done")}
        assert [f.unit for f in s.failed()] == [unit("failed")]
        assert three(s.counts()) == (1, 1, 1)


def test_a_grown_window_replaces_its_period_and_remembers_what_to_remove(tmp_path: Path) -> None:
    monday = date(2026, 1, 5)
    with StateStore(tmp_path / "s.sqlite", granularity="week") as s:
        short, grown = Unit("a", monday, monday), Unit("a", monday, monday + timedelta(days=2))
        mark_done(s, [short])
        s.stage([fetched(grown)])
        assert s.replaced([grown]) == [short]  # the dataset still holds the short window
        assert s.staged(monday) == [fetched(grown)]
        s.mark_done([grown])
        assert s.replaced([grown]) == []
        assert done_among(s, [short, grown]) == {grown}
        assert three(s.counts()) == (1, 0, 0)


def test_a_window_moved_to_another_partition_is_still_one_period(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.sqlite", granularity="month") as s:
        old, new = (
            Unit("a", date(2026, 3, 5), date(2026, 3, 31)),
            Unit("a", date(2026, 3, 6), date(2026, 3, 31)),
        )
        mark_done(s, [old])
        s.stage([fetched(new)])
        assert s.replaced([new]) == [old]
        assert s.staged_periods() == [new.start]


def test_the_granularity_is_recorded_and_held(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    StateStore(path, granularity="week").close()
    assert StateStore(path).granularity == "week"
    with pytest.raises(JobError, match="'week' units; the job asks for 'day'"):
        StateStore(path, granularity="day")


def test_a_version_1_state_is_carried_over_keeping_the_newest_window_per_period(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    monday = "2026-03-02"
    rows = [  # three nights of a clipped week, then a whole day unit
        ("a", monday, "2026-03-03", "done", "2026-03-04T03:00:00+00:00"),
        ("a", monday, "2026-03-04", "done", "2026-03-05T03:00:00+00:00"),
        ("a", monday, "2026-03-05", "done", "2026-03-06T03:00:00+00:00"),
        ("b", "2026-03-09", "2026-03-15", "done", "2026-03-16T03:00:00+00:00"),
    ]
    db.executemany(
        "INSERT INTO units (collection_hash, period_start, period_end, status, done_at)"
        " VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    db.execute("INSERT INTO runs (recorded_at, summary) VALUES ('t', '{}')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with StateStore(path, granularity="week") as s:
        newest = Unit("a", date(2026, 3, 2), date(2026, 3, 5))
        b = Unit("b", date(2026, 3, 9), date(2026, 3, 15))
        assert done_among(s, [newest, b]) == {newest, b}
        assert three(s.counts()) == (2, 0, 0)
        assert s.lookup([b])[b].final  # written the day after its end
    assert sqlite3.connect(path).execute("SELECT count(*) FROM runs").fetchone() == (1,)


V1_SCHEMA = """
CREATE TABLE units (
    collection_hash TEXT NOT NULL, period_start TEXT NOT NULL, period_end TEXT NOT NULL,
    status TEXT NOT NULL, payload TEXT, staged_at TEXT, done_at TEXT, error_kind TEXT,
    error_reason TEXT, attempts INTEGER, failed_at TEXT,
    PRIMARY KEY (period_start, collection_hash, period_end)
) WITHOUT ROWID;
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at TEXT NOT NULL,
                   summary TEXT NOT NULL);
"""


def test_a_readonly_store_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with StateStore(path) as s:
        mark_done(s, [unit("a")])
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    with StateStore(path, readonly=True) as s:
        assert three(s.counts()) == (1, 0, 0)
        with pytest.raises(sqlite3.OperationalError):
            s.set_meta("x", "y")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    with pytest.raises(HarvesterError, match="no state database"):
        StateStore(tmp_path / "missing.sqlite", readonly=True)


def test_record_run(store: StateStore) -> None:
    store.record_run({"units_fetched": 3, "started": date(2026, 1, 1), "exit_code": 0})
    store.record_run({"units_fetched": 0})
    db = sqlite3.connect(store.path)
    rows = db.execute("SELECT recorded_at, summary FROM runs ORDER BY id").fetchall()
    assert [json.loads(summary) for _, summary in rows] == [
        {"units_fetched": 3, "started": "2026-01-01", "exit_code": 0},
        {"units_fetched": 0},
    ]
    assert rows[0][0] == AT.isoformat()


# --- read only ---------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of ``folder``: its bytes and its mtime (ns)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_readonly_reads_and_writes_nothing(tmp_path: Path) -> None:
    path = default_state_path(tmp_path)
    with StateStore(path) as s:
        s.stage([fetched(unit("staged"))])
        s.mark_failed(unit("failed"), kind="http", reason="HTTP 503", attempts=6)
    before = _files(path.parent)
    assert sorted(before) == ["state.sqlite"]  # a clean close leaves no -wal or -shm
    with StateStore(path, readonly=True) as s:
        counts = s.counts()
        assert (counts["done"], counts["staged"], counts["failed"]) == (0, 1, 1)
        assert [f.unit for f in s.failed()] == [unit("failed")]
        with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
            s.mark_failed(unit("failed"), kind="http", reason="HTTP 503", attempts=7)
        assert _files(path.parent) == before  # no -wal, no -shm, even while open
    assert _files(path.parent) == before


def test_readonly_sees_what_an_open_writer_committed(store: StateStore) -> None:
    store.stage([fetched(unit("done")), fetched(unit("later"))])
    store.mark_done([unit("done")])
    assert store.path.with_name("state.sqlite-wal").exists()  # the writer is live
    with StateStore(store.path, readonly=True) as reader:
        counts = reader.counts()
        assert (counts["done"], counts["staged"], counts["failed"]) == (1, 1, 0)
    store.mark_done([unit("later")])  # the writer is unharmed
    assert store.counts()["done"] == 2


def test_readonly_refuses_a_missing_or_foreign_or_newer_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "state.sqlite"
    with pytest.raises(HarvesterError, match="no state database here"):
        StateStore(missing, readonly=True)
    assert not missing.parent.exists()
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(HarvesterError, match="not a harvester state database"):
        StateStore(empty, readonly=True)
    newer = tmp_path / "newer.sqlite"
    StateStore(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(HarvesterError, match="schema version 99"):
        StateStore(newer, readonly=True)


# --- the lock ----------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from harvester.lake.lock import OutputLock
lock = OutputLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()  # hold until told (or killed)
lock.release()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the output's lock until its stdin gets a line."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    yield proc
    proc.kill()
    proc.wait()


def test_lock_held_elsewhere_raises_with_pid(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(LockedError) as info:
        OutputLock(tmp_path).acquire()
    message = str(info.value)
    assert f"pid {holder.pid}, started 20" in message
    assert str(tmp_path) in message and "--wait" in message
    assert info.value.exit_code == 4


def test_lock_is_free_after_the_holder_releases(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.wait(timeout=5) == 0
    with OutputLock(tmp_path) as lock:
        assert lock.path == tmp_path / "_state" / "harvester.lock"


def test_sigkilled_holder_does_not_block(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=5)
    lock = OutputLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / "_state" / "harvester.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_wait_blocks_until_the_holder_releases(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    def release_soon() -> None:
        time.sleep(0.2)
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()

    releaser = threading.Thread(target=release_soon)
    began = time.monotonic()
    releaser.start()
    lock = OutputLock(tmp_path)
    lock.acquire(wait=True)
    assert time.monotonic() - began >= 0.2
    assert holder.wait(timeout=5) == 0
    lock.release()
    releaser.join()


def test_two_locks_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    first = OutputLock(tmp_path)
    first.acquire()
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        OutputLock(tmp_path).acquire()
    first.release()
    first.release()  # releasing twice is harmless
    with OutputLock(tmp_path):
        pass


# --- version 3: when each answer was fetched, and what a staged unit is staged over -----------


def test_finality_follows_the_answer_fetched_at(store: StateStore) -> None:
    on_the_day, after = unit("a"), unit("b")
    store.stage(
        [
            fetched(on_the_day)._replace(fetched_at=datetime(2026, 1, 1, 23, 59, tzinfo=UTC)),
            fetched(after)._replace(fetched_at=datetime(2026, 1, 2, 0, 0, tzinfo=UTC)),
        ]
    )
    found = store.lookup([on_the_day, after])
    assert (found[on_the_day].final, found[after].final) == (False, True)


def test_pages_asked_for_are_recorded_even_when_none_came(store: StateStore) -> None:
    asked, not_asked = unit("a"), unit("b")
    store.stage(
        [fetched(asked, pages=0), fetched(not_asked, pages=0)._replace(pages_requested=False)]
    )
    assert [r.pages_requested for r in store.staged(JAN1)] == [True, False]
    store.mark_done([asked, not_asked])
    found = store.lookup([asked, not_asked])
    assert (found[asked].pages, found[not_asked].pages) == (True, False)


def test_an_answer_staged_over_newer_rows_is_superseded_and_the_rows_stay_done(
    store: StateStore,
) -> None:
    from harvester.state.store import Held

    u = unit("a")
    store.stage([fetched(u)])  # staged by a run then killed
    newer = AT + timedelta(hours=5)
    theirs = Unit("a", JAN1, JAN1)
    store.reconcile([], [], {}, written=[Held(theirs, newer, True)])  # another run wrote it
    staged = store.staged(JAN1)
    assert store.superseded(staged) == staged
    store.keep_written([u])
    assert three(store.counts()) == (1, 0, 0)
    assert store.lookup([u])[u] == ("done", JAN1, JAN1, True, True)
    assert store.staged(JAN1) == []
    # An answer newer than the rows under it is not superseded.
    store.stage([fetched(u)._replace(fetched_at=newer + timedelta(seconds=1))])
    assert store.superseded(store.staged(JAN1)) == []


def test_staging_over_a_done_unit_remembers_when_its_rows_were_fetched(store: StateStore) -> None:
    u = unit("a")
    mark_done(store, [u])
    older = fetched(u)._replace(fetched_at=AT - timedelta(days=1))  # a clock set back, say
    store.stage([older])
    assert store.superseded([older]) == [older]  # fetched_at never moves backwards


V2_REMOVED = (
    "    fetched_at      TEXT,\n",
    "    written_at      TEXT,\n",
    "    written_pages   INTEGER,\n",
)


def test_a_version_2_state_is_upgraded_in_place(tmp_path: Path) -> None:
    from harvester.state import tables

    schema = tables.SCHEMA
    for line in V2_REMOVED:
        assert line in schema
        schema = schema.replace(line, "")
    path = tmp_path / "v2.sqlite"
    db = sqlite3.connect(path)
    db.executescript(schema + ";" + tables.FILES_SCHEMA)
    payload = json.dumps([AT.isoformat(), 1, 2, 3, 4, []])
    db.executemany(
        "INSERT INTO units (collection_hash, period, period_start, period_end, status, final,"
        " pages, payload) VALUES (?, ?, ?, ?, ?, 1, 1, ?)",
        [("a", "2026-01-01", "2026-01-01", "2026-01-01", "done", None),
         ("b", "2026-01-01", "2026-01-01", "2026-01-01", "staged", payload)],
    )  # fmt: skip
    db.execute("INSERT INTO meta VALUES ('granularity', 'day')")
    db.execute("INSERT INTO files VALUES ('collection_stats', '2026-01-01', 10, 20)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with StateStore(path, readonly=True) as old:  # status and verify read it as it is
        assert three(old.counts()) == (1, 1, 0)
    with StateStore(path) as s:
        assert s.files() == {}  # forgotten: the next run reads its window once, learning when
        (staged,) = s.staged(JAN1)
        assert staged.fetched_at == AT
        at = sqlite3.connect(path).execute("SELECT fetched_at FROM units WHERE status = 'staged'")
        assert at.fetchone() == (AT.isoformat(),)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (3,)
