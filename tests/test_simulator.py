"""The bundled simulator, over real HTTP: exact figures, every code, limits, faults, runners."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import pytest

import harvester.simulator as simulator_package
from harvester.api import GET_LIST, GET_STATS, sign
from harvester.model import RateLimit
from harvester.simulator import (
    FAULT_KINDS,
    Simulator,
    SimulatorConfig,
    SimulatorProcess,
    SimulatorThread,
    config_from_mapping,
    day_stats,
    expected_stats,
    pages_of,
)
from harvester.simulator.data import QUIET_PERCENT
from harvester.simulator.state import Randomness, RateWindows

KEY, SECRET = "demo-key", "demo-secret"
HASH = "d3m0h45h"
START, END = date(2024, 3, 1), date(2024, 3, 10)
NO_LIMITS = SimulatorConfig(enforce_limits=False)


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A started simulator with rate limits off; tests reconfigure what they need."""
    sim = Simulator(SimulatorConfig(enforce_limits=False))
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as client:
        yield client


def signed(secret: str = SECRET, **params: str) -> dict[str, str]:
    """Parameters with the apiKey default and a valid signature added."""
    params.setdefault("apiKey", KEY)
    return {**params, "signature": sign(params, secret)}


def stats_params(
    collection_hash: str = HASH, start: date = START, end: date = END, pages: bool = True
) -> dict[str, str]:
    """A signed getStats request."""
    return signed(
        action=GET_STATS,
        collectionHash=collection_hash,
        startDate=start.isoformat(),
        endDate=end.isoformat(),
        includePageStats="true" if pages else "false",
    )


async def call(
    session: aiohttp.ClientSession, url: str, params: dict[str, str], **kwargs: Any
) -> dict[str, Any]:
    """GET the API and decode its envelope."""
    async with session.get(url, params=params, **kwargs) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


def sync_call(base_url: str, params: dict[str, str]) -> dict[str, Any]:
    """GET the API without an event loop (for the thread and process runners)."""
    url = base_url + "?" + urllib.parse.urlencode(params)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


# --- surface and statistics -------------------------------------------------------------------


def test_public_surface() -> None:
    assert set(simulator_package.__all__) == {
        "FAULT_KINDS",
        "Simulator",
        "SimulatorConfig",
        "SimulatorProcess",
        "SimulatorThread",
        "config_from_mapping",
        "day_stats",
        "expected_stats",
        "pages_of",
        "serve",
    }


def test_figures_are_plausible_and_about_a_tenth_of_days_are_quiet() -> None:
    config = SimulatorConfig()
    days = [date(2021, 1, 1) + timedelta(days=i) for i in range(1000)]
    quiet = 0
    for day in days:
        data = day_stats(HASH, day, config, page_stats=True)
        assert 0 <= data["impressions"] <= 500 and 0 <= data["views"] <= 800
        assert 0 <= data["time_spent"] <= 5000 and 0 <= data["downloads"] <= 20
        assert [p["page"] for p in data["pages"]] == list(range(1, pages_of(HASH, config) + 1))
        for page in data["pages"]:
            assert 0 <= page["views"] <= 300 and 0 <= page["clicks"] <= 50
            assert 0 <= page["time_spent"] <= 3000
        if not any(data[k] for k in ("impressions", "views", "time_spent", "downloads")):
            quiet += 1
            assert all(p["views"] == p["clicks"] == p["time_spent"] == 0 for p in data["pages"])
    assert QUIET_PERCENT / 2 <= quiet / 10 <= QUIET_PERCENT * 2
    assert "likes" not in day_stats(HASH, days[0], config, page_stats=True)


def test_window_is_the_sum_of_its_days() -> None:
    config = SimulatorConfig()
    window = expected_stats(HASH, START, END, config)
    days = [day_stats(HASH, START + timedelta(days=i), config, page_stats=True) for i in range(10)]
    for name in ("impressions", "views", "time_spent", "downloads"):
        assert window[name] == sum(day[name] for day in days)
    for i, page in enumerate(window["pages"]):
        assert page["page"] == i + 1
        for name in ("views", "clicks", "time_spent"):
            assert page[name] == sum(day["pages"][i][name] for day in days)
    assert expected_stats(HASH, START, START, config) == days[0]
    with pytest.raises(ValueError):
        expected_stats(HASH, END, START, config)


def test_a_seed_fixes_the_figures_and_another_seed_changes_them() -> None:
    first = expected_stats(HASH, START, END, SimulatorConfig(seed=7))
    assert first == expected_stats(HASH, START, END, SimulatorConfig(seed=7))
    assert first != expected_stats(HASH, START, END, SimulatorConfig(seed=8))
    assert first != expected_stats("x9y8z7", START, END, SimulatorConfig(seed=7))


def test_pages_of_defaults_to_one_to_max_pages_and_honours_overrides() -> None:
    counts = {pages_of(f"h{i}", SimulatorConfig(max_pages=5)) for i in range(200)}
    assert counts == {1, 2, 3, 4, 5}
    assert pages_of(HASH, SimulatorConfig(pages={HASH: 0})) == 0
    assert pages_of(HASH, SimulatorConfig(pages={HASH: 3})) == 3


def test_a_revision_changes_that_day_and_nothing_else() -> None:
    base = SimulatorConfig()
    revised = SimulatorConfig(revisions={"2024-03-05": 1})
    changed = date(2024, 3, 5)
    for day in (changed - timedelta(days=1), changed + timedelta(days=1), date(2023, 3, 5)):
        assert day_stats(HASH, day, base, page_stats=True) == day_stats(
            HASH, day, revised, page_stats=True
        )
    before = day_stats(HASH, changed, base, page_stats=False)
    after = day_stats(HASH, changed, revised, page_stats=False)
    assert before != after
    window_before = expected_stats(HASH, START, END, base, page_stats=False)
    window_after = expected_stats(HASH, START, END, revised, page_stats=False)
    for name in before:
        assert window_after[name] - window_before[name] == after[name] - before[name]


# --- the API over HTTP ------------------------------------------------------------------------


async def test_signed_get_stats_answers_exactly_expected_stats(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    body = await call(session, simulator.base_url, stats_params())
    assert body == {"code": 20, "status": "OK", "data": expected_stats(HASH, START, END, NO_LIMITS)}
    assert len(body["data"]["pages"]) == pages_of(HASH, NO_LIMITS)


@pytest.mark.parametrize("flag", ["false", "1", "yes", None])
async def test_pages_only_when_include_page_stats_is_true(
    simulator: Simulator, session: aiohttp.ClientSession, flag: str | None
) -> None:
    params = {"action": GET_STATS, "collectionHash": HASH, "startDate": "2024-03-01"}
    params["endDate"] = "2024-03-02"
    if flag is not None:
        params["includePageStats"] = flag
    body = await call(session, simulator.base_url, signed(**params))
    assert body["code"] == 20 and "pages" not in body["data"]
    params["includePageStats"] = "TRUE"
    assert "pages" in (await call(session, simulator.base_url, signed(**params)))["data"]


async def test_missing_dates_default_to_2020_and_today(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    body = await call(session, simulator.base_url, signed(action=GET_STATS, collectionHash=HASH))
    today = datetime.now(UTC).date()
    expected = expected_stats(HASH, date(2020, 1, 1), today, NO_LIMITS, page_stats=False)
    assert body["data"] == expected
    assert simulator.counters()["successes"] == {f"{HASH}|2020-01-01|{today.isoformat()}": 1}


async def test_root_path_and_post_form_answer_too(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    root = simulator.base_url.removesuffix("v1/")
    assert (await call(session, root, stats_params()))["code"] == 20
    async with session.post(simulator.base_url, data=stats_params()) as response:
        assert (await response.json())["code"] == 20


def _unsigned_stats(**overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "apiKey": KEY,
        "action": GET_STATS,
        "collectionHash": HASH,
        "startDate": "2024-03-01",
        "endDate": "2024-03-02",
        **overrides,
    }
    return {k: v for k, v in params.items() if v is not None}


def _without(name: str) -> dict[str, str]:
    return {k: v for k, v in stats_params().items() if k != name}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        pytest.param(_without("apiKey"), 30, id="no-apiKey"),
        pytest.param(_without("signature"), 30, id="no-signature"),
        pytest.param(signed(**_unsigned_stats(action=None)), 30, id="no-action"),
        pytest.param(signed(**_unsigned_stats(apiKey="nobody")), 41, id="unknown-key"),
        pytest.param({**stats_params(), "signature": "0" * 32}, 44, id="bad-signature"),
        pytest.param(signed(secret="wrong", **_unsigned_stats()), 44, id="wrong-secret"),
        pytest.param(signed(**_unsigned_stats(action="collection.x")), 42, id="unknown-action"),
        pytest.param(signed(**_unsigned_stats(collectionHash=None)), 30, id="no-hash"),
        pytest.param(signed(**_unsigned_stats(startDate="2024-3-1")), 40, id="malformed-start"),
        pytest.param(signed(**_unsigned_stats(endDate="2024-02-30")), 40, id="impossible-end"),
        pytest.param(
            signed(**_unsigned_stats(startDate="2024-03-05", endDate="2024-03-04")),
            40,
            id="start-after-end",
        ),
        pytest.param(signed(**_unsigned_stats(collectionHash="a/b")), 46, id="malformed-hash"),
        pytest.param(signed(**_unsigned_stats(collectionHash="x" * 65)), 46, id="long-hash"),
        pytest.param(signed(**_unsigned_stats(collectionHash="gone")), 43, id="deleted"),
        pytest.param(signed(**_unsigned_stats(collectionHash="stranger")), 46, id="not-known"),
    ],
)
async def test_error_codes(
    simulator: Simulator, session: aiohttp.ClientSession, params: dict[str, str], code: int
) -> None:
    simulator.reconfigure(known=frozenset({HASH, "gone"}), deleted=frozenset({"gone"}))
    body = await call(session, simulator.base_url, params)
    assert body["code"] == code and isinstance(body["status"], str)
    counters = simulator.counters()
    assert counters["codes"] == {str(code): 1}
    assert counters["bad_signatures"] == (1 if code == 44 else 0)
    assert counters["successes"] == {}


async def test_get_list_pages_through_the_catalog(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.reconfigure(catalog=("aa1", "bb2", "aa3", "cc4"), pages={"aa1": 0})
    url = simulator.base_url
    listed = (await call(session, url, signed(action=GET_LIST)))["data"]
    assert [item["hash"] for item in listed] == ["aa1", "bb2", "aa3", "cc4"]
    assert listed[0] == {"hash": "aa1", "title": "Flipbook aa1", "status": "public", "pages": 0}
    page = await call(session, url, signed(action=GET_LIST, **{"from": "1", "count": "2"}))
    assert [item["hash"] for item in page["data"]] == ["bb2", "aa3"]
    found = await call(session, url, signed(action=GET_LIST, query="AA"))
    assert [item["hash"] for item in found["data"]] == ["aa1", "aa3"]
    editable = await call(session, url, signed(action=GET_LIST, collectionStatus="editable"))
    assert editable["data"] == []
    assert (await call(session, url, signed(action=GET_LIST, count="-1")))["code"] == 40


async def test_a_revision_shows_up_on_the_live_server(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    before = (await call(session, simulator.base_url, stats_params()))["data"]
    simulator.reconfigure(revisions={"2024-03-04": 2})
    after = (await call(session, simulator.base_url, stats_params()))["data"]
    assert before != after
    assert after == expected_stats(HASH, START, END, simulator.config)
    outside = stats_params(start=date(2024, 3, 5), end=END)
    assert (await call(session, simulator.base_url, outside))["data"] == expected_stats(
        HASH, date(2024, 3, 5), END, NO_LIMITS
    )


@pytest.mark.parametrize("count", [0, 2])
async def test_page_count_overrides(
    simulator: Simulator, session: aiohttp.ClientSession, count: int
) -> None:
    default = expected_stats(HASH, START, END, NO_LIMITS)["pages"]
    assert len(default) > 2  # the override must really cut pages away
    simulator.reconfigure(pages={HASH: count})
    data = (await call(session, simulator.base_url, stats_params()))["data"]
    assert data["pages"] == default[:count]
    assert data == expected_stats(HASH, START, END, simulator.config)


# --- rate limits ------------------------------------------------------------------------------


def test_rate_windows_answer_31_then_32_and_slide() -> None:
    windows = RateWindows()
    limits = (RateLimit(3, 1.0), RateLimit(5, 60.0))
    verdicts = [windows.admit(KEY, t, limits) for t in (0.0, 0.1, 0.2, 0.3)]
    assert verdicts == [None, None, None, 31]  # the 31 still counts: 4 in the minute
    assert windows.admit(KEY, 1.5, limits) is None  # 5 in the minute now
    assert windows.admit(KEY, 2.6, limits) == 32
    assert windows.admit(KEY, 2.7, limits) == 32
    assert windows.admit("other-key", 2.7, limits) is None  # windows are per key
    assert windows.admit(KEY, 62.0, limits) is None  # 1.5, 2.6, 2.7 remain: the minute slid
    both = RateWindows()
    for t in range(5):
        both.admit(KEY, t * 0.01, (RateLimit(3, 1.0), RateLimit(4, 60.0)))
    assert both.admit(KEY, 0.06, (RateLimit(3, 1.0), RateLimit(4, 60.0))) == 31


async def test_rate_limits_over_http_with_a_driven_clock(session: aiohttp.ClientSession) -> None:
    now = [0.0]
    limits = (RateLimit(3, 1.0), RateLimit(5, 60.0))
    sim = Simulator(SimulatorConfig(rate_limits=limits), clock=lambda: now[0])
    url = await sim.start()
    try:

        async def codes(count: int, at: float) -> list[int]:
            now[0] = at
            return [(await call(session, url, stats_params()))["code"] for _ in range(count)]

        assert await codes(4, at=0.0) == [20, 20, 20, 31]
        assert await codes(2, at=1.5) == [20, 32]  # the second slid, the minute holds 5
        assert await codes(1, at=61.0) == [20]  # the minute slid too
        counters = sim.counters()
        assert counters["rate_limit_violations"] == 2
        assert counters["codes"] == {"20": 5, "31": 1, "32": 1}
    finally:
        await sim.stop()


async def test_rate_limits_slide_in_real_time(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.reconfigure(enforce_limits=True, rate_limits=(RateLimit(3, 0.2),))
    url = simulator.base_url
    codes = [(await call(session, url, stats_params()))["code"] for _ in range(4)]
    assert codes == [20, 20, 20, 31]
    await asyncio.sleep(0.25)
    assert (await call(session, url, stats_params()))["code"] == 20


async def test_bad_signatures_count_in_the_windows(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.reconfigure(enforce_limits=True, rate_limits=(RateLimit(2, 5.0),))
    bad = {**stats_params(), "signature": "f" * 32}
    assert [(await call(session, simulator.base_url, bad))["code"] for _ in range(3)] == [44] * 3
    assert (await call(session, simulator.base_url, stats_params()))["code"] == 31
    unknown = signed(**_unsigned_stats(apiKey="nobody"))
    assert (await call(session, simulator.base_url, unknown))["code"] == 41  # not counted


# --- faults and latency -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http500", "http502", "http503"])
async def test_http_error_faults_send_html(
    simulator: Simulator, session: aiohttp.ClientSession, kind: str
) -> None:
    simulator.reconfigure(faults={kind: 1.0})
    async with session.get(simulator.base_url, params=stats_params()) as response:
        assert response.status == int(kind[4:])
        assert response.content_type == "text/html"
    assert simulator.counters()["http_status"] == {kind[4:]: 1}


@pytest.mark.parametrize("retry_after", [1.5, None])
async def test_http429_fault_with_and_without_retry_after(
    simulator: Simulator, session: aiohttp.ClientSession, retry_after: float | None
) -> None:
    simulator.reconfigure(faults={"http429": 1.0}, retry_after=retry_after)
    async with session.get(simulator.base_url, params=stats_params()) as response:
        assert response.status == 429
        assert response.headers.get("Retry-After") == (None if retry_after is None else "1.5")
        with pytest.raises(ValueError):
            json.loads(await response.read())


@pytest.mark.parametrize("code", [22, 38, 31, 32])
async def test_code_faults_are_envelopes_not_violations(
    simulator: Simulator, session: aiohttp.ClientSession, code: int
) -> None:
    kind = f"code{code}"
    simulator.reconfigure(faults={kind: 1.0})
    assert (await call(session, simulator.base_url, stats_params()))["code"] == code
    counters = simulator.counters()
    assert counters["faults"] == {kind: 1} and counters["rate_limit_violations"] == 0
    assert counters["successes"] == {}


async def test_truncated_fault_cuts_a_real_body_with_a_matching_length(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.reconfigure(faults={"truncated": 1.0})
    async with session.get(simulator.base_url, params=stats_params()) as response:
        body = await response.read()
        assert response.status == 200 and int(response.headers["Content-Length"]) == len(body)
    whole = {"code": 20, "status": "OK", "data": expected_stats(HASH, START, END, NO_LIMITS)}
    assert json.dumps(whole, separators=(",", ":")).encode().startswith(body)
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    assert simulator.counters()["successes"] == {}


async def test_not_json_fault_is_html_with_200(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.reconfigure(faults={"not_json": 1.0})
    async with session.get(simulator.base_url, params=stats_params()) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ContentTypeError):
            await response.json()


async def test_drop_fault_closes_the_connection(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.reconfigure(faults={"drop": 1.0})
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await call(session, simulator.base_url, stats_params())
    counters = simulator.counters()
    # aiohttp resends an idempotent request once after a disconnect: one call, two drops.
    assert counters["faults"] == {"drop": counters["requests"]} and counters["http_status"] == {}


async def test_slow_fault_stalls_then_answers(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.reconfigure(faults={"slow": 1.0}, slow_seconds=5.0)
    with pytest.raises(asyncio.TimeoutError):
        await call(session, simulator.base_url, stats_params(), timeout=aiohttp.ClientTimeout(0.2))
    simulator.reconfigure(slow_seconds=0.05)
    started = time.monotonic()
    assert (await call(session, simulator.base_url, stats_params()))["code"] == 20
    assert time.monotonic() - started >= 0.05
    await asyncio.sleep(0.05)  # the abandoned handler is cancelled, not left stalling
    assert simulator.counters()["in_flight"] == 0


async def test_faults_follow_the_seed(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    async def codes() -> list[int]:
        params = stats_params(pages=False)
        return [(await call(session, simulator.base_url, params))["code"] for _ in range(30)]

    simulator.reconfigure(seed=1, faults={"code22": 0.3, "code38": 0.3})
    first = await codes()
    assert {20, 22, 38} <= set(first)
    simulator.reconfigure(seed=2)
    other = await codes()
    simulator.reconfigure(seed=1)  # a new seed restarts the draws
    assert await codes() == first != other


def test_latency_is_a_seeded_distribution() -> None:
    draws = [Randomness(3).latency((0.01, 0.02)) for _ in range(2)]
    assert draws[0] == draws[1]
    many = Randomness(3)
    values = [many.latency((0.01, 0.02)) for _ in range(50)]
    assert all(0.01 <= v <= 0.02 for v in values) and len(set(values)) > 40


async def test_latency_overlaps_concurrent_requests(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.reconfigure(latency=(0.05, 0.1))
    windows = [stats_params(start=START + timedelta(days=i), end=END) for i in range(8)]
    started = time.monotonic()
    bodies = await asyncio.gather(*(call(session, simulator.base_url, p) for p in windows))
    assert time.monotonic() - started >= 0.05
    assert [b["code"] for b in bodies] == [20] * 8
    counters = simulator.counters()
    assert counters["max_in_flight"] >= 2 and counters["in_flight"] == 0
    assert counters["requests"] == 8 and counters["http_status"] == {"200": 8}
    assert set(counters["successes"]) == {
        f"{HASH}|{(START + timedelta(days=i)).isoformat()}|{END.isoformat()}" for i in range(8)
    }
    simulator.reset_counters()
    assert simulator.counters()["requests"] == simulator.counters()["max_in_flight"] == 0


# --- configuration and admin ------------------------------------------------------------------


def test_config_from_mapping_builds_typed_values_and_round_trips() -> None:
    config = config_from_mapping(
        {
            "seed": 3,
            "rate_limits": [{"calls": 10, "seconds": 1}, [100, 60]],
            "latency": [0.01, 0.02],
            "faults": {"drop": 0.1, "http502": 0.2},
            "known": ["a", "b"],
            "deleted": ["b"],
            "catalog": ["a", "b"],
            "revisions": {"2024-03-04": 1},
        }
    )
    assert config.rate_limits == (RateLimit(10, 1.0), RateLimit(100, 60.0))
    assert config.known == frozenset({"a", "b"}) and config.catalog == ("a", "b")
    assert config.latency == (0.01, 0.02) and config.keys == {KEY: SECRET}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"colour": 1}, "colour"),
        ({"seed": "1"}, "seed"),
        ({"enforce_limits": 1}, "enforce_limits"),
        ({"faults": {"meteor": 0.1}}, "faults"),
        ({"faults": {"drop": 0.7, "slow": 0.7}}, "faults"),
        ({"latency": [0.2, 0.1]}, "latency"),
        ({"rate_limits": [{"calls": 0, "seconds": 1}]}, "rate_limits"),
        ({"revisions": {"2024-3-4": 1}}, "revisions"),
        ({"pages": {"a": -1}}, "pages"),
        ({"known": "abc"}, "known"),
    ],
)
def test_config_from_mapping_names_the_bad_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=repr(field)):
        config_from_mapping(data)


def test_every_fault_kind_is_accepted() -> None:
    assert SimulatorConfig(faults=dict.fromkeys(FAULT_KINDS, 1 / len(FAULT_KINDS))).faults


async def test_admin_endpoints(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    admin = simulator.base_url.removesuffix("v1/") + "_sim/"
    await call(session, simulator.base_url, stats_params())
    async with session.get(admin + "counters") as response:
        assert (await response.json())["codes"] == {"20": 1}
    async with session.post(admin + "reset") as response:
        assert response.status == 200
    assert simulator.counters()["requests"] == 0
    change = {"faults": {"code22": 1.0}, "known": [HASH]}
    async with session.post(admin + "config", json=change) as response:
        assert response.status == 200
    assert simulator.config.known == frozenset({HASH})
    assert (await call(session, simulator.base_url, stats_params()))["code"] == 22
    async with session.post(admin + "config", json={"faults": {"meteor": 1}}) as response:
        assert response.status == 400 and "faults" in (await response.json())["error"]
    assert simulator.config.faults == {"code22": 1.0}


# --- runners ----------------------------------------------------------------------------------


@pytest.fixture(params=[SimulatorThread, SimulatorProcess], ids=["thread", "process"])
def background(request: pytest.FixtureRequest) -> Iterator[SimulatorThread | SimulatorProcess]:
    """The simulator on its own thread, then in its own process."""
    with request.param(SimulatorConfig(enforce_limits=False)) as runner:
        yield runner


def test_background_runners(background: SimulatorThread | SimulatorProcess) -> None:
    body = sync_call(background.base_url, stats_params())
    assert body["data"] == expected_stats(HASH, START, END, NO_LIMITS)
    assert background.counters()["codes"] == {"20": 1}
    background.reconfigure(faults={"code38": 1.0}, known=frozenset({HASH}))
    assert sync_call(background.base_url, stats_params())["code"] == 38
    with pytest.raises(ValueError, match="faults"):
        background.reconfigure(faults={"meteor": 1.0})
    background.reset_counters()
    assert background.counters()["requests"] == 0
    background.close()
    with pytest.raises(urllib.error.URLError):
        sync_call(background.base_url, stats_params())
    background.close()  # twice is fine


def test_serve_prints_the_url_and_key_names_and_stops_on_sigterm() -> None:
    code = (
        "from harvester.simulator import SimulatorConfig, serve\n"
        "serve(SimulatorConfig(), '127.0.0.1', 0)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert KEY in line and SECRET not in line
            base_url = next(word for word in line.split() if word.startswith("http://"))
            assert sync_call(base_url, stats_params())["code"] == 20
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()


async def test_get_list_can_ignore_from(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.reconfigure(catalog=("aa1", "bb2", "aa3", "cc4"), list_ignores_from=True)
    page = await call(session, simulator.base_url, signed(action=GET_LIST, **{"from": "2"}))
    assert [item["hash"] for item in page["data"]] == ["aa1", "bb2", "aa3", "cc4"]
    assert config_from_mapping({"list_ignores_from": True}).list_ignores_from is True
    with pytest.raises(ValueError, match="'list_ignores_from': expected true or false"):
        config_from_mapping({"list_ignores_from": "yes"})
    with pytest.raises(ValueError, match="'list_ignores_from': expected true or false"):
        SimulatorConfig(list_ignores_from=1)  # type: ignore[arg-type]
