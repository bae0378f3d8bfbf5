"""Job files: defaults, every kind of problem (all reported at once), secrets, credentials."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from harvester.api import DEFAULT_RATE_LIMITS
from harvester.errors import JobError, Problem
from harvester.job.credentials import Credentials, load_credentials
from harvester.job.location import Location
from harvester.job.model import ApiSettings, Collection, Job
from harvester.job.parse import load_job, parse_job
from harvester.model import RateLimit
from harvester.plan.windows import count_units

TODAY = date(2026, 4, 10)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse(text: str) -> Job:
    return parse_job(textwrap.dedent(text), "job.yaml", today=TODAY)


def problems(text: str) -> dict[str, str]:
    """The problems of a job text, as {field: message}."""
    with pytest.raises(JobError) as caught:
        parse(text)
    assert all(p.source == "job.yaml" for p in caught.value.problems)
    return {p.field: p.message for p in caught.value.problems}


@pytest.fixture
def job_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write a job text to a file and give its path."""

    def write(text: str) -> Path:
        path = tmp_path / "job.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


# --- valid files ----------------------------------------------------------------------------


def test_a_minimal_job_gets_every_default() -> None:
    job = parse("start: 2026-01-01\ncollections: [d3m0h45h]\n")
    assert job == parse_job("start: 2026-01-01\ncollections: [d3m0h45h]", "job.yaml", today=TODAY)
    assert job.collections == (Collection("d3m0h45h", date(2026, 1, 1), date(2026, 4, 9)),)
    assert job.api == ApiSettings()
    assert job.api.rate_limits == DEFAULT_RATE_LIMITS
    assert not job.api.uses_simulator
    assert (job.concurrency, job.granularity, job.page_stats, job.refresh_days) == (
        4,
        "day",
        True,
        0,
    )
    assert job.output == Location.local("output")
    assert job.source == Path("job.yaml")


def test_every_setting_is_read() -> None:
    job = parse("""
        api:
          base_url: http://localhost:8080/v1/
          key_env: MY_KEY
          secret_env: MY_SECRET
          timeout_seconds: 2.5
          rate_limits: [{calls: 1, seconds: 0.5}]
        concurrency: 1000
        retry: {attempts: 100, max_backoff_seconds: 1, circuit_breaker_seconds: 30}
        granularity: range
        page_stats: false
        output: data/stats
        refresh_days: 3
        start: -30d
        end: today
        collections:
          - hash: a_b-C
          - {hash: x9y8z7, start: 2026-03-01, end: 2026-03-31}
          - {hash: only-end, end: yesterday}
          - "0123"
    """)
    assert job.api == ApiSettings(
        "http://localhost:8080/v1/", "MY_KEY", "MY_SECRET", 2.5, (RateLimit(1, 0.5),)
    )
    assert (job.concurrency, job.retry.attempts, job.retry.max_backoff_seconds) == (1000, 100, 1)
    assert job.retry.circuit_breaker_seconds == 30.0
    assert (job.granularity, job.page_stats, job.output, job.refresh_days) == (
        "range",
        False,
        Location.local("data/stats"),
        3,
    )
    assert [(c.hash, c.start.isoformat(), c.end.isoformat()) for c in job.collections] == [
        ("a_b-C", "2026-03-11", "2026-04-10"),
        ("x9y8z7", "2026-03-01", "2026-03-31"),
        ("only-end", "2026-03-11", "2026-04-09"),
        ("0123", "2026-03-11", "2026-04-10"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today", date(2026, 4, 10)),
        ("yesterday", date(2026, 4, 9)),
        ("-0d", date(2026, 4, 10)),
        ("-1d", date(2026, 4, 9)),
        ("-365d", date(2025, 4, 10)),
        ("'2026-02-28'", date(2026, 2, 28)),
        ("2024-02-29", date(2024, 2, 29)),
    ],
)
def test_date_forms(text: str, expected: date) -> None:
    assert parse(f"start: {text}\nend: {text}\ncollections: [a]").collections[0].end == expected


def test_today_defaults_to_the_utc_calendar_day() -> None:
    job = parse_job("start: -1d\nend: today\ncollections: [a]", "job.yaml")
    assert (job.collections[0].end - job.collections[0].start).days == 1


def test_the_bundled_configs_are_valid() -> None:
    demo = load_job(CONFIGS / "demo.yaml")
    assert demo.api.uses_simulator
    assert demo.api.rate_limits == (RateLimit(20, 1.0), RateLimit(600, 60.0))
    assert (demo.concurrency, demo.granularity) == (8, "day")
    assert demo.output == Location.local("output/demo")  # apart from the real API's rows
    assert [c.hash for c in demo.collections] == ["d3m0h45h", "x9y8z7", "f1ipb00k"]
    assert all(c.start.year == 2026 for c in demo.collections)
    assert 60 <= count_units(demo) <= 120  # a few seconds against the simulator
    example = load_job(CONFIGS / "example.yaml", today=TODAY)
    assert not example.api.uses_simulator
    assert example.refresh_days == 3
    assert example.collections[0].start == date(2026, 3, 11)
    assert example.collections[0].end == date(2026, 4, 9)
    agency = load_job(CONFIGS / "accounts.yaml", today=TODAY)
    assert example.api.endpoint == agency.api.endpoint == "https://api.flipsnack.com/v1/"
    assert len({demo.output, example.output, agency.output}) == 3  # three outputs, never mixed


# --- the file itself ------------------------------------------------------------------------


def test_a_missing_file_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(JobError) as caught:
        load_job(tmp_path / "nope.yaml")
    assert caught.value.problems == [
        Problem(str(tmp_path / "nope.yaml"), "<file>", "file not found")
    ]


def test_a_directory_or_binary_file_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="directory"):
        load_job(tmp_path)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(JobError, match="UTF-8"):
        load_job(tmp_path / "bin.yaml")


def test_load_job_reads_a_file_and_names_it(job_file: Callable[[str], Path]) -> None:
    path = job_file("start: 2026-01-01\ncollections: [a]\n")
    assert load_job(path, today=TODAY).source == path
    bad = job_file("collections: [a]\nconcurrency: 0\n")
    with pytest.raises(JobError) as caught:
        load_job(bad, today=TODAY)
    assert {p.source for p in caught.value.problems} == {str(bad)}


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"])
def test_an_empty_file_says_so(text: str) -> None:
    assert "empty" in problems(text)["<file>"]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just words\n", "42\n"])
def test_a_file_that_is_not_a_mapping(text: str) -> None:
    assert "expected a mapping" in problems(text)["<file>"]


def test_yaml_syntax_errors_give_line_and_column() -> None:
    found = problems("collections:\n  - a\n  - [b\nstart: 2026-01-01\n")
    assert list(found) == ["<yaml>"]
    assert "line 4, column 6" in found["<yaml>"]
    assert "line 1, column 5: mapping values are not allowed here" in problems("a: b: c")["<yaml>"]
    assert "line 2, column 3" in problems("a: 1\nb:\x01\n")["<yaml>"]


def test_a_key_given_twice_is_an_error_not_last_one_wins() -> None:
    found = problems("start: 2026-01-01\ncollections: [a]\nstart: 2026-02-01\n")
    assert found == {"<yaml>": "invalid YAML at line 3, column 1: the key 'start' is given twice"}
    merged = parse(
        "start: 2026-01-01\ncollections:\n  - &c {hash: a, end: 2026-01-02}\n"
        "  - {<<: *c, hash: b}\n"
    )
    assert [c.hash for c in merged.collections] == ["a", "b"]  # a merge key may be overridden


def test_hostile_yaml_is_refused_quickly() -> None:
    assert "nested too deeply" in problems("[" * 5000 + "]" * 5000)["<yaml>"]
    bomb = (
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        )
        + "collections: *i\n"
    )
    found = problems(bomb)  # 9**9 leaves if anything walked it all
    assert len(found["collections[0]"]) < 300


def test_impossible_dates_are_strings_not_crashes() -> None:
    found = problems("start: 2026-02-30\nend: 2026-13-01\ncollections: [a]\n")
    assert "not a real calendar date: '2026-02-30'" in found["start"]
    assert "not a real calendar date: '2026-13-01'" in found["end"]


# --- every problem at once ------------------------------------------------------------------

EVERYTHING_WRONG = """
    api:
      base_url: ftp://example.com
      timeout_seconds: 0
      rate_limits: [{calls: yes, seconds: -1}, {calls: 1, secnds: 2}, 5]
    concurency: 4
    concurrency: 1001
    retry: {attempts: 0, max_backoff_seconds: .inf, circuit_breaker_seconds: "x"}
    granularity: weak
    page_stats: "yes"
    output: ""
    refresh_days: -1
    start: 2026-02-30
    end: 2026-01-01T10:00:00
    collections:
      - 123456
      - {hash: x9y8z7, start: 2026-03-31, end: 2026-03-01}
      - x9y8z7
      - {hash: "bad hash!", start: -3x}
      - {hsh: abc}
      - [1, 2]
"""


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    found = problems(EVERYTHING_WRONG)
    assert set(found) == {
        "api.base_url",
        "api.timeout_seconds",
        "api.rate_limits[0].calls",
        "api.rate_limits[0].seconds",
        "api.rate_limits[1].secnds",
        "api.rate_limits[1].seconds",
        "api.rate_limits[2]",
        "concurency",
        "concurrency",
        "retry.attempts",
        "retry.max_backoff_seconds",
        "retry.circuit_breaker_seconds",
        "granularity",
        "page_stats",
        "output",
        "refresh_days",
        "start",
        "end",
        "collections[0]",
        "collections[1]",
        "collections[2].hash",
        "collections[3].hash",
        "collections[3].start",
        "collections[4].hsh",
        "collections[4].hash",
        "collections[5]",
    }
    assert found["concurency"] == "unknown key 'concurency'; did you mean 'concurrency'?"
    assert found["api.rate_limits[1].secnds"].endswith("did you mean 'seconds'?")
    assert found["granularity"].endswith("did you mean 'week'?")
    assert "YAML reads yes/no/on/off/true/false as booleans" in found["api.rate_limits[0].calls"]
    assert "from 1 to 1000, found 1001" in found["concurrency"]
    assert "found inf" in found["retry.max_backoff_seconds"]
    assert "without a time of day" in found["end"]
    assert "quotes" in found["collections[0]"] and "123456" in found["collections[0]"]
    assert found["collections[1]"] == "start 2026-03-31 is after end 2026-03-01"
    assert "already collections[1]" in found["collections[2].hash"]
    assert "'bad hash!'" in found["collections[3].hash"]
    assert "-Nd" in found["collections[3].start"]
    assert found["api.rate_limits[1].seconds"] == "required"
    assert "ftp://example.com" in found["api.base_url"]  # base_url may be echoed


@pytest.mark.parametrize(
    ("setting", "field", "expected"),
    [
        ("concurrency: 0", "concurrency", "from 1 to 1000"),
        ("concurrency: 4.0", "concurrency", "found number 4.0"),
        ("concurrency: '4'", "concurrency", "found string '4'"),
        ("concurrency: on", "concurrency", "booleans"),
        ("concurrency:", "concurrency", "found null"),
        ("refresh_days: true", "refresh_days", "booleans"),
        ("retry: {attempts: 101}", "retry.attempts", "from 1 to 100"),
        ("retry: {max_backoff_seconds: 0}", "retry.max_backoff_seconds", "> 0"),
        ("retry: {circuit_breaker_seconds: -5}", "retry.circuit_breaker_seconds", "> 0"),
        ("retry: {circuit_breaker_seconds: .nan}", "retry.circuit_breaker_seconds", "finite"),
        ("retry: 3", "retry", "expected a mapping"),
        ("api: {timeout_seconds: no}", "api.timeout_seconds", "booleans"),
        ("api: {rate_limits: []}", "api.rate_limits", "non-empty list"),
        ("api: {rate_limits: [{calls: 0, seconds: 1}]}", "api.rate_limits[0].calls", "from 1 to"),
        ("api: {rate_limits: [{calls: 1.5, seconds: 1}]}", "api.rate_limits[0].calls", "integer"),
        ("api: {base_url: 'https://'}", "api.base_url", "http(s)://"),
        ("api: {base_url: api.flipsnack.com}", "api.base_url", "http(s)://"),
        ("api: {base_url: 'https://a b'}", "api.base_url", "http(s)://"),
        ("api: {base_url: 'http://[::1'}", "api.base_url", "http(s)://"),
        ("api: {base_url: 5}", "api.base_url", "integer 5"),
        ("api: {base_url: 'https://me:pw@api.flipsnack.com/v1/'}", "api.base_url", "credentials"),
        ("granularity: Day", "granularity", "did you mean 'day'?"),
        ("granularity: [day]", "granularity", "expected one of day, week, month, range"),
        ("page_stats: 1", "page_stats", "true or false"),
        ("output: 5", "output", "non-empty folder path"),
        ("output: '   '", "output", "non-empty folder path"),
        ("output: null", "output", "found null"),
        ("end: 2026-1-5", "end", "YYYY-MM-DD"),
        ("end: '2026-01-05 10:00'", "end", "without a time"),
        ("end: -3", "end", "found integer -3"),
        ("end: +3d", "end", "-Nd"),
        ("end: -99999999d", "end", "-Nd"),
        ("end: -9999999d", "end", "before year 1"),
        ("end: tomorrow", "end", "today, yesterday"),
        # Bounded so that dates and timers stay in range (these ended in an internal error).
        ("refresh_days: 100000000", "refresh_days", "from 0 to 36600 (about a century), found"),
        ("refresh_days: 36601", "refresh_days", "from 0 to 36600 (about a century)"),
        (f"refresh_days: {10**30}", "refresh_days", "found 1000000"),
        ("api: {timeout_seconds: 3601}", "api.timeout_seconds", "at most 3600 (an hour)"),
        (f"api: {{timeout_seconds: {10**400}}}", "api.timeout_seconds", "found 100000000"),
        ("api: {timeout_seconds: 1.0e+300}", "api.timeout_seconds", "at most 3600"),
        ("retry: {max_backoff_seconds: 86401}", "retry.max_backoff_seconds", "at most 86400"),
        ("retry: {circuit_breaker_seconds: 1.0e+20}", "retry.circuit_breaker_seconds", "a week"),
        (
            f"api: {{rate_limits: [{{calls: {2**64}, seconds: 1}}]}}",
            "api.rate_limits[0].calls",
            "from 1 to 1000000",
        ),
        (
            "api: {rate_limits: [{calls: 1, seconds: 1.0e+308}]}",
            "api.rate_limits[0].seconds",
            "at most 2678400 (31 days)",
        ),
    ],
)
def test_one_bad_setting(setting: str, field: str, expected: str) -> None:
    found = problems(f"start: 2020-01-01\ncollections: [a]\n{setting}\n")
    assert list(found) == [field], found
    assert expected in found[field]


def test_a_float_timeout_and_int_seconds_are_numbers() -> None:
    job = parse(
        "start: 2026-01-01\ncollections: [a]\napi: {timeout_seconds: 5, "
        "rate_limits: [{calls: 2, seconds: 1}]}\n"
    )
    assert job.api.timeout_seconds == 5.0 and isinstance(job.api.timeout_seconds, float)
    assert job.api.rate_limits == (RateLimit(2, 1.0),)


# --- collections ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("collections", "field", "expected"),
    [
        ("collections: []", "collections", "non-empty list"),
        ("collections:", "collections", "found null"),
        ("collections: a", "collections", "non-empty list"),
        ("collections: {hash: a}", "collections", "non-empty list"),
        ("collections: [0123]", "collections[0]", "quotes"),
        ("collections: [yes]", "collections[0]", "quotes"),
        ("collections: [2026-01-01]", "collections[0]", "quotes"),
        ("collections: [{hash: 12}]", "collections[0].hash", "quotes"),
        ("collections: [{hash: null}]", "collections[0].hash", "found null"),
        ("collections: [{}]", "collections[0].hash", "required"),
        ("collections: ['']", "collections[0]", "1-64"),
        (f"collections: [{'a' * 65}]", "collections[0]", "1-64"),
        ("collections: ['d3m0/h45h']", "collections[0]", "1-64"),
        (
            "collections: [{hash: a, stat: 2026-01-01}]",
            "collections[0].stat",
            "did you mean 'start'?",
        ),
    ],
)
def test_bad_collections(collections: str, field: str, expected: str) -> None:
    found = problems(f"start: 2026-01-01\n{collections}\n")
    assert list(found) == [field], found
    assert expected in found[field]


def test_missing_collections() -> None:
    assert "required" in problems("start: 2026-01-01\n")["collections"]


def test_duplicate_hashes_name_the_earlier_index() -> None:
    found = problems("start: 2026-01-01\ncollections: [a, b, {hash: a}, b]\n")
    assert found == {
        "collections[2].hash": "duplicate: 'a' is already collections[0]",
        "collections[3].hash": "duplicate: 'b' is already collections[1]",
    }


def test_start_is_required_once_not_per_collection() -> None:
    found = problems("collections: [a, b, c, d, e, f, g, {hash: h, start: 2026-01-01}]\n")
    assert list(found) == ["start"]
    assert "collections[0]" in found["start"] and "and 2 more" in found["start"]
    assert "collections[7]" not in found["start"]
    assert parse("collections: [{hash: h, start: 2026-01-01}]").collections[0].hash == "h"


def test_start_after_end_per_collection_and_for_the_job_level_range() -> None:
    found = problems("""
        start: 2026-05-01
        end: 2026-04-01
        collections:
          - a
          - {hash: b, start: 2026-04-01}
          - {hash: c, end: 2026-04-30}
          - {hash: d, end: 2026-06-01}
    """)
    assert set(found) == {"start", "collections[2]"}
    assert "job-level range" in found["start"]
    assert found["collections[2]"] == "start 2026-05-01 is after end 2026-04-30"


def test_a_job_level_range_used_by_nobody_may_be_inverted() -> None:
    job = parse(
        "start: 2026-05-01\nend: 2026-04-01\ncollections: "
        "[{hash: a, start: 2026-01-01}, {hash: b, end: 2026-06-01}]\n"
    )
    assert [(c.start, c.end) for c in job.collections] == [
        (date(2026, 1, 1), date(2026, 4, 1)),
        (date(2026, 5, 1), date(2026, 6, 1)),
    ]


def test_start_in_the_future_is_after_yesterday() -> None:
    assert "after end 2026-04-09" in problems("start: today\ncollections: [{hash: a}]")["start"]


# --- secrets --------------------------------------------------------------------------------

SECRET = "sk_live_9f8e7d6c5b4a"


@pytest.mark.parametrize(
    "where",
    [
        "api: {api_key: VALUE}",
        "api: {apiKey: VALUE}",
        "api: {key: VALUE}",
        "api: {secret: VALUE}",
        "api: {api_secret: VALUE}",
        "api: {password: VALUE}",
        "api: {token: VALUE}",
        "api: {flipsnack_secret: VALUE}",
        "api_key: VALUE",
        "secret: VALUE",
        "token: VALUE",
        "password: VALUE",
        "api-key: VALUE",
    ],
)
def test_credentials_in_the_job_file_are_refused_without_echo(where: str) -> None:
    with pytest.raises(JobError) as caught:
        parse(f"start: 2026-01-01\ncollections: [a]\n{where.replace('VALUE', SECRET)}\n")
    (problem,) = caught.value.problems
    assert "environment variable" in problem.message and "api.key_env" in problem.message
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "setting",
    [
        f"api: {{key_env: '{SECRET}-x'}}",
        f"api: {{secret_env: '{SECRET} '}}",
        f"api: {{key_env: '9{SECRET}'}}",
        f"api: {{kye_env: {SECRET}}}",
        f"api: {{secret_env: [{SECRET}]}}",
        f"api: {{key_env: {{a: {SECRET}}}}}",
        f"api: {SECRET}",
        f"api: [{SECRET}]",
    ],
)
def test_nothing_under_api_is_echoed(setting: str) -> None:
    with pytest.raises(JobError) as caught:
        parse(f"start: 2026-01-01\ncollections: [a]\n{setting}\n")
    assert SECRET not in str(caught.value)
    assert caught.value.problems


def test_key_env_must_be_a_variable_name() -> None:
    found = problems("start: 2026-01-01\ncollections: [a]\napi: {key_env: 'abc-123-def'}\n")
    assert "literal credential" in found["api.key_env"]
    found = problems("start: 2026-01-01\ncollections: [a]\napi: {secret_env: FLIPSNACK_API_KEY}")
    assert "same variable" in found["api.secret_env"]


def test_the_simulator_still_validates_variable_names() -> None:
    job = parse("start: 2026-01-01\ncollections: [a]\napi: {base_url: simulator}\n")
    assert job.api.uses_simulator
    found = problems(
        "start: 2026-01-01\ncollections: [a]\napi: {base_url: simulator, key_env: 'not a name'}\n"
    )
    assert list(found) == ["api.key_env"]


# --- credentials from the environment -------------------------------------------------------


def test_credentials_come_from_the_named_variables() -> None:
    api = ApiSettings(key_env="K", secret_env="S")
    creds = load_credentials(api, {"K": " key1 ", "S": "secret1"})
    assert (creds.key, creds.secret) == ("key1", "secret1")
    assert "key1" not in repr(creds) and "secret1" not in str(creds)


def test_credentials_fall_back_to_files(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("key-from-file\n")
    (tmp_path / "s").write_text("  secret-from-file\n")
    env = {"K_FILE": str(tmp_path / "k"), "S": "", "S_FILE": str(tmp_path / "s")}
    creds = load_credentials(ApiSettings(key_env="K", secret_env="S"), env)
    assert creds == Credentials("key-from-file", "secret-from-file")


def test_missing_credentials_name_every_variable() -> None:
    with pytest.raises(JobError) as caught:
        load_credentials(ApiSettings(), {"FLIPSNACK_API_KEY": "   "})
    assert [(p.source, p.field) for p in caught.value.problems] == [
        ("environment", "FLIPSNACK_API_KEY"),
        ("environment", "FLIPSNACK_API_SECRET"),
    ]
    assert "FLIPSNACK_API_SECRET_FILE" in caught.value.problems[1].message


def test_unreadable_or_empty_credential_files(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    env = {"K_FILE": str(tmp_path / "missing"), "S_FILE": str(tmp_path / "empty")}
    with pytest.raises(JobError) as caught:
        load_credentials(ApiSettings(key_env="K", secret_env="S"), env)
    first, second = caught.value.problems
    assert first.field == "K_FILE" and str(tmp_path / "missing") in first.message
    assert "No such file" in first.message
    assert second.field == "S_FILE" and "empty" in second.message


def test_credential_values_never_appear_in_errors(tmp_path: Path) -> None:
    with pytest.raises(JobError) as caught:
        load_credentials(ApiSettings(), {"FLIPSNACK_API_KEY": SECRET})
    assert SECRET not in str(caught.value)
    assert [p.field for p in caught.value.problems] == ["FLIPSNACK_API_SECRET"]


@pytest.mark.parametrize("key", ['""', "' '"])
def test_an_empty_key_is_named_in_the_message(key: str) -> None:
    with pytest.raises(JobError) as info:
        parse_job(f"{key}: 1\ncollections: [abc]\nstart: 2026-01-01\n", "job.yaml")
    (problem,) = info.value.problems
    assert problem.field in ("''", "' '")  # quoted, so the reader sees which key
    assert "unknown key" in problem.message


def test_a_bad_job_range_is_reported_once_with_discover_and_collections() -> None:
    text = "discover: true\nstart: 2026-02-30\ncollections: [abc]\n"
    with pytest.raises(JobError) as info:
        parse_job(text, "job.yaml")
    assert [p.field for p in info.value.problems] == ["start"]


def test_a_tilde_in_output_is_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    job = parse("start: 2026-01-01\ncollections: [abc]\noutput: ~/flip\n")
    assert job.output == Location.local(tmp_path / "home" / "flip")
    assert parse("start: 2026-01-01\ncollections: [abc]\noutput: a/~b\n").output == Location.local(
        "a/~b"
    )
    found = problems("start: 2026-01-01\ncollections: [abc]\noutput: ~no-such-user-x9/flip\n")
    assert found == {
        "output": "cannot expand '~no-such-user-x9': no such user, or no home folder is known"
    }


def test_the_largest_bounded_values_are_accepted() -> None:
    job = parse(
        """\
        start: 2026-01-01
        collections: [abc]
        refresh_days: 36600
        api: {timeout_seconds: 3600, rate_limits: [{calls: 1000000, seconds: 2678400}]}
        retry: {max_backoff_seconds: 86400, circuit_breaker_seconds: 604800}
        """
    )
    assert job.refresh_days == 36600 and job.api.timeout_seconds == 3600
    assert job.api.rate_limits == (RateLimit(1_000_000, 2_678_400.0),)
    assert (job.retry.max_backoff_seconds, job.retry.circuit_breaker_seconds) == (86400, 604800)


def test_an_integer_too_long_to_read_is_a_yaml_problem() -> None:
    found = problems(f"start: 2026-01-01\ncollections: [abc]\nconcurrency: {'1' * 5000}\n")
    assert list(found) == ["<yaml>"]
    assert "value has 5000 digits" in found["<yaml>"]


def test_a_credential_file_is_read_up_to_64_kib(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("k" * 65536)
    (tmp_path / "s").write_text("s" * 65537)
    env = {"K_FILE": str(tmp_path / "k"), "S_FILE": str(tmp_path / "s")}
    with pytest.raises(JobError) as caught:
        load_credentials(ApiSettings(key_env="K", secret_env="S"), env)
    (problem,) = caught.value.problems
    assert problem.field == "S_FILE" and "larger than 64 KiB" in problem.message
    assert "sss" not in problem.message
