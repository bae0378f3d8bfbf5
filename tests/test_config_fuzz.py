"""Fuzzing the job-file reader: it answers with a Job or a JobError, never anything else."""

from __future__ import annotations

import copy
import re
from datetime import date, timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvester.errors import JobError
from harvester.job.model import Job
from harvester.job.parse import parse_job
from harvester.plan.windows import count_units, iter_units

TODAY = date(2026, 4, 10)
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID_JOB: dict[str, Any] = {
    "api": {
        "base_url": "https://api.flipsnack.com/v1/",
        "key_env": "FLIPSNACK_API_KEY",
        "secret_env": "FLIPSNACK_API_SECRET",
        "timeout_seconds": 30,
        "rate_limits": [{"calls": 5, "seconds": 1}, {"calls": 60, "seconds": 60}],
    },
    "concurrency": 4,
    "retry": {"attempts": 6, "max_backoff_seconds": 60, "circuit_breaker_seconds": 600},
    "granularity": "week",
    "page_stats": True,
    "output": "output",
    "refresh_days": 0,
    "start": date(2026, 1, 1),
    "end": "yesterday",
    "collections": [
        {"hash": "d3m0h45h"},
        {"hash": "x9y8z7", "start": date(2026, 3, 1), "end": date(2026, 3, 31)},
        "f1ipb00k",
    ],
}


def outcome(text: str) -> Job | JobError:
    """What parse_job makes of a text; any other exception fails the test."""
    try:
        return parse_job(text, "fuzz.yaml", today=TODAY)
    except JobError as err:
        assert err.problems, "a JobError always says what is wrong"
        for problem in err.problems:
            assert problem.source == "fuzz.yaml"
            assert problem.field and problem.message
        return err


# --- 1. arbitrary text ----------------------------------------------------------------------

yamlish_text = st.lists(
    st.sampled_from(
        [
            "api:",
            "  base_url: ",
            "collections:",
            "  - ",
            "start:",
            "end:",
            " -3d",
            "granularity:",
            "retry:",
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\n",
            "\t",
            "'",
            '"',
            "&a",
            "*a",
            "!!python/object",
            "2026-02-30",
            "yes",
            "123456",
            "? ",
            "---",
            "#",
            "- [",
            "\x00",
            "é",
            "concurrency: ",
            "...",
        ]
    ),
    max_size=30,
).map("".join)


@FUZZ
@given(st.one_of(st.text(), yamlish_text))
def test_any_text_gives_a_job_or_a_job_error(text: str) -> None:
    outcome(text)


# --- 2. mutations of a valid job -------------------------------------------------------------

names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-3, max_value=2000),
    st.floats(),
    st.text(max_size=20),
    st.dates(),
    st.sampled_from(
        [
            "today",
            "yesterday",
            "-3d",
            "-0d",
            "-99999999d",
            "2026-02-30",
            "2026-01-01",
            "2026-01-01T10:00:00",
            "simulator",
            "http://x",
            "day",
            "week",
            "range",
            "FLIPSNACK_API_KEY",
            "",
            " ",
            "0123",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(names, inner, max_size=3)),
    max_leaves=6,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indices) in a nested dict/list, the root first."""
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths(child, (*prefix, index))
    return found


def mutate(data: st.DataObject, job: dict[str, Any]) -> Any:
    """Replace, delete or add at a few random places; rarely, replace the whole document."""
    if data.draw(st.integers(min_value=0, max_value=19)) == 0:
        return data.draw(values)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        path = data.draw(st.sampled_from(paths(job)[1:]))
        parent = job
        for step in path[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(names)] = data.draw(values)
        if not job:
            break
    return job


def exists(node: Any, field: str) -> bool:
    """Whether a problem's field (``a.b[2].c``) is in ``node``, or is a key missing from it."""
    steps = [name or int(index) for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field)]
    for position, step in enumerate(steps):
        last = position == len(steps) - 1
        in_dict = isinstance(node, dict) and step in node
        if in_dict or (isinstance(node, list) and isinstance(step, int) and step < len(node)):
            node = node[step]
        else:
            return last  # a required key may be absent, but its parent must be there
    return True


@FUZZ
@given(st.data())
def test_a_mutated_job_names_fields_that_exist(data: st.DataObject) -> None:
    job = mutate(data, copy.deepcopy(VALID_JOB))
    result = outcome(yaml.safe_dump(job))
    if isinstance(result, JobError):
        for problem in result.problems:
            if problem.field == "<file>":
                assert not isinstance(job, dict) or not job
            else:
                assert exists(job, problem.field), (problem, job)
    else:
        assert isinstance(job, dict) and result.collections


SECRET = "Zq7sEcReTvAlUe42"


@FUZZ
@given(st.data())
def test_values_under_api_are_never_echoed(data: st.DataObject) -> None:
    job = copy.deepcopy(VALID_JOB)
    target = data.draw(st.sampled_from(["api", "key_env", "secret_env", "new"]))
    secret = data.draw(
        st.sampled_from(
            [SECRET, f"{SECRET}-x", f"9{SECRET}", [SECRET], {"k": SECRET}, f"sk {SECRET}"]
        )
    )
    if target == "api":
        job["api"] = secret
    elif target == "new":
        job["api"][data.draw(names)] = secret
    else:
        job["api"][target] = secret
    result = outcome(yaml.safe_dump(job))
    if isinstance(result, JobError):
        assert SECRET not in str(result)
    else:  # only a value that is a valid variable name is accepted, as a name
        assert secret == SECRET and target in ("key_env", "secret_env")


# --- 3. valid jobs plan exactly as many units as they count ---------------------------------

origin = date(2024, 12, 1)


@st.composite
def valid_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job over at most ~100 days per collection."""

    def day() -> date:
        return origin + timedelta(days=draw(st.integers(min_value=0, max_value=400)))

    start = day()
    job: dict[str, Any] = {
        "granularity": draw(st.sampled_from(["day", "week", "month", "range"])),
        "start": start,
        "end": start + timedelta(days=draw(st.integers(min_value=0, max_value=100))),
    }
    hashes = draw(
        st.lists(
            st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    collections: list[Any] = []
    for h in hashes:
        kind = draw(st.sampled_from(["bare", "own", "default"]))
        if kind == "own":
            first = day()
            last = first + timedelta(days=draw(st.integers(min_value=0, max_value=100)))
            collections.append({"hash": h, "start": first, "end": last})
        else:
            collections.append(h if kind == "bare" else {"hash": h})
    job["collections"] = collections
    return job


@FUZZ
@given(valid_jobs())
def test_a_valid_job_plans_as_many_units_as_it_counts(raw: dict[str, Any]) -> None:
    job = outcome(yaml.safe_dump(raw))
    assert isinstance(job, Job), str(job)
    assert [c.hash for c in job.collections] == [
        c if isinstance(c, str) else c["hash"] for c in raw["collections"]
    ]
    assert count_units(job) == len(list(iter_units(job)))
