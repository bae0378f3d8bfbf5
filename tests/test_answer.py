"""Bounded answers: whatever a server sends, an attempt ends within its deadline, its body within
the cap, its decoding within bounds, and only its unit pays for it.

The unit tests decode bytes directly; the end-to-end test runs the CLI in a child process
against :class:`tests.fake_api.FakeApi` and measures the child's memory with psutil.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import yaml

from harvester.errors import BadResponse, RequestTimeout, UnreadableAnswer
from harvester.fetch.answer import MAX_DEPTH, decode
from harvester.fetch.client import StatsClient
from harvester.fetch.session import make_session
from harvester.job.credentials import Credentials
from harvester.model import RateLimit, Unit
from harvester.pacing.limiter import RateLimiter
from tests.conftest import job_dict
from tests.fake_api import GOOD_DATA, FakeApi, envelope

UNIT = Unit("good1", date(2026, 3, 1), date(2026, 3, 1))
PEAK_RSS_LIMIT = 300 * 1024 * 1024
RUN_LIMIT_SECONDS = 90.0  # a generous ceiling: the misbehaving run takes about 10 s here


# --- decoding -----------------------------------------------------------------------------


def test_a_compact_answer_decodes_as_orjson_reads_it() -> None:
    body = envelope(GOOD_DATA)
    assert decode(200, body) == orjson.loads(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"code":20,"data":{"views":1,"views":2}}',  # compact: orjson would keep 2
        b'{"code": 20, "data": {"views": 1, "views" : 2}}',  # spaced, so not its own encoding
        b'{"code":20,"data":{"pages":[{"page":1,"page":1}]}}',
        b'{"code":20,"data":{"x":NaN,"x":1}}',  # what only json decodes
    ],
)
def test_duplicate_keys_are_a_bad_answer(body: bytes) -> None:
    with pytest.raises(UnreadableAnswer, match="duplicate key") as caught:
        decode(200, body)
    assert not caught.value.transient
    assert isinstance(caught.value.payload, str) and len(caught.value.payload) <= 1024


def test_a_string_that_looks_like_a_key_is_not_a_duplicate() -> None:
    body = b'{"code": 20, "data": {"title": "a \\"views\\": 3", "views": 1}}'
    assert decode(200, body)["data"] == {"title": 'a "views": 3', "views": 1}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 1_025, 200_000])
def test_nesting_too_deep_is_a_bad_answer_never_a_recursion_error(depth: int) -> None:
    body = b'{"code":20,"data":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(UnreadableAnswer, match=f"nested deeper than {MAX_DEPTH} levels"):
        decode(200, body)


def test_orjson_encodes_no_deeper_than_the_bound_the_fast_path_relies_on() -> None:
    orjson.dumps(orjson.loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH))
    deeper = orjson.loads(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(deeper)


@pytest.mark.parametrize("body", [b"<html>", b'{"code": 20, "data": {', b"\xff\xfe", b""])
def test_a_body_that_is_not_json_stays_transient(body: bytes) -> None:
    with pytest.raises(BadResponse):
        decode(200, body)


def test_what_orjson_refuses_but_json_reads_stays_a_payload() -> None:
    assert decode(200, b'{"code": 20, "data": {"views": NaN}}')["data"]["views"] != 0


def test_the_cost_per_answer_is_measured_not_guessed() -> None:
    """The duplicate-key check on a compact fifty-page answer: printed, and bounded loosely."""
    data = {**GOOD_DATA, "pages": [{**GOOD_DATA["pages"][0], "page": i} for i in range(1, 51)]}
    body = envelope(data)
    rounds = 2_000
    started = time.perf_counter()
    for _ in range(rounds):
        orjson.loads(body)
    plain = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(rounds):
        decode(200, body)
    checked = time.perf_counter() - started
    print(
        f"per answer: orjson {plain / rounds * 1e6:.1f} µs, checked {checked / rounds * 1e6:.1f} µs"
    )
    assert checked < plain * 20  # a floor, not a benchmark: a re-decode per answer would pass too


# --- the deadline -------------------------------------------------------------------------


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    """The misbehaving API on a free loopback port (its gzip bomb made once per session)."""
    with FakeApi() as api:
        yield api


@pytest.fixture
def slow_api() -> Iterator[FakeApi]:
    """The misbehaving API without its gzip bomb: for the tests of the deadline."""
    with FakeApi(bomb=False) as api:
        yield api


async def _client(api: FakeApi, limiter: RateLimiter, timeout: float) -> StatsClient:
    session = make_session(limiter, timeout_seconds=timeout, concurrency=2)
    return StatsClient(session, api.base_url, Credentials("k", "s"), timeout_seconds=timeout)


async def test_the_deadline_does_not_count_the_wait_for_a_slot(slow_api: FakeApi) -> None:
    # One call per 1.5 s: the second request waits about that long before it may go.
    limiter = RateLimiter([RateLimit(1, 1.5)])
    client = await _client(slow_api, limiter, timeout=1.0)
    try:
        first = await client.get_stats(UNIT)
        second = await client.get_stats(UNIT)
    finally:
        await client._session.close()
    assert first.views == second.views == GOOD_DATA["views"]
    assert limiter.waits >= 1  # the second one did wait, longer than its own timeout


async def test_a_trickled_body_ends_at_the_deadline(slow_api: FakeApi) -> None:
    limiter = RateLimiter([RateLimit(100, 1.0)])
    client = await _client(slow_api, limiter, timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(RequestTimeout, match="within 1 s"):
            await client.get_stats(Unit("trickle1", UNIT.start, UNIT.end))
    finally:
        await client._session.close()
    # Bytes kept coming every 0.25 s, so no read timeout could fire: only the deadline did.
    assert time.monotonic() - started < 30
    assert slow_api.bytes_sent["trickle1"] >= 2


# --- end to end: a run against the misbehaving API -----------------------------------------


def run_measured(args: list[str], env: dict[str, str], stderr: Path) -> tuple[int, float, int]:
    """Run the CLI in a child; return its exit code, its run time and its peak RSS (bytes),
    sampled every 20 ms with psutil (and the kernel's high-water mark where there is one)."""
    started = time.monotonic()
    with open(stderr, "w", encoding="utf-8") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "harvester", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        watched = psutil.Process(child.pid)
        peak = 0
        while True:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                peak = max(peak, watched.memory_info().rss, _high_water(child.pid))
            try:
                code = child.wait(timeout=0.02)  # the sampling period, not a synchronisation
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - started > RUN_LIMIT_SECONDS:
                    child.kill()
                    child.wait()
                    pytest.fail(f"the run did not end within {RUN_LIMIT_SECONDS} s")
    return code, time.monotonic() - started, peak


def _high_water(pid: int) -> int:
    """The process's peak resident set so far (Linux's VmHWM), 0 where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


BAD = {  # hash → (error kind, words of the reason), one per misbehaviour of the fake API
    "trickle1": ("timeout", "no complete answer within 2 s"),
    "huge1": ("unreadable_answer", "larger than the 8 MiB cap"),
    "bomb1": ("unreadable_answer", "counted after decompression"),
    "deep1": ("unreadable_answer", "nested deeper than"),
    "dupkeys1": ("unreadable_answer", "duplicate key 'views'"),
    "notfound1": ("bad_response", "HTTP 404 with a code-20 body"),
}
QUARANTINED = {"huge1", "bomb1", "deep1", "dupkeys1"}


@pytest.mark.slow
def test_a_misbehaving_api_fails_only_its_bad_units_within_time_and_memory(
    fake_api: FakeApi, tmp_path: Path, output_dir: Path, env: dict[str, str]
) -> None:
    job = job_dict(
        fake_api.base_url,
        output_dir,
        api={
            "base_url": fake_api.base_url,
            "timeout_seconds": 2,
            "rate_limits": [{"calls": 200, "seconds": 1}],
        },
        retry={"attempts": 2, "max_backoff_seconds": 0.05, "circuit_breaker_seconds": 600},
        concurrency=4,
        start="2026-03-01",
        end="2026-03-01",
        collections=["good1", "good2", *BAD],
        discover={"max_collections": 60},  # getList never ends: 60 collections, then it stops
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    stderr = tmp_path / "stderr.txt"
    code, elapsed, peak = run_measured(["run", str(path)], env, stderr)
    said = stderr.read_text()
    print(f"exit {code} in {elapsed:.1f} s, peak RSS {peak / 2**20:.0f} MiB")
    assert code == 1, said
    assert "Traceback" not in said and "bug in harvester" not in said
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    assert "stopped at discover.max_collections (60)" in said
    assert fake_api.requests["list"] == 2  # not one page more
    report: dict[str, Any] = json.loads((output_dir / "_state" / "last-run.json").read_text())
    failed = {f["collection_hash"]: f for f in report["failed"]}
    assert set(failed) == set(BAD)
    for name, (kind, words) in BAD.items():
        assert failed[name]["kind"] == kind and words in failed[name]["reason"], failed[name]
    assert report["units_committed"] == 2 + 60  # the good ones and the 60 listed
    quarantine = Path(report["quarantine_file"]).read_text().splitlines()
    entries = [json.loads(line) for line in quarantine]
    assert {e["collection_hash"] for e in entries} == QUARANTINED
    assert all(len(e["payload"]) <= 1024 for e in entries)
    # The client stopped reading: the 1 GiB body was not sent whole, once per attempt.
    assert fake_api.bytes_sent["huge1"] < 2 * 256 * 2**20
