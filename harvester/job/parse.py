"""YAML job file → frozen, typed job objects. All validation of user input lives here.

Every problem is reported as a :class:`~harvester.errors.Problem` naming the file, the field
path and what was expected; all problems of a file are collected and raised together as one
:class:`~harvester.errors.JobError` (exit 2). Nothing downstream touches raw dicts.

Credentials never live in the job file: it names the environment variables that hold them, and
no message ever echoes a value found under ``api`` (a mistyped key may be a real secret) except
the harmless ``base_url``, ``timeout_seconds``, ``rate_limits`` and ``max_answer_mib``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harvester.api import DEFAULT_BASE_URL, DEFAULT_RATE_LIMITS
from harvester.errors import JobError, Problem
from harvester.job.catalog import parse_catalog
from harvester.job.fields import (
    ABSENT,
    ENV_NAME,
    HASH,
    Context,
    calendar_date,
    integer,
    kind,
    load_yaml,
    mapping,
    positive,
    show,
)
from harvester.job.location import Location, StorageOptions
from harvester.job.model import (
    ACCOUNT_NAME,
    COLLECTION_STATUSES,
    DEFAULT_ATTEMPTS,
    DEFAULT_CIRCUIT_BREAKER_SECONDS,
    DEFAULT_CONCURRENCY,
    DEFAULT_FORMAT,
    DEFAULT_GRANULARITY,
    DEFAULT_KEY_ENV,
    DEFAULT_MAX_ANSWER_MIB,
    DEFAULT_MAX_BACKOFF_SECONDS,
    DEFAULT_MAX_COLLECTIONS,
    DEFAULT_OUTPUT,
    DEFAULT_REFRESH_DAYS,
    DEFAULT_SECRET_ENV,
    DEFAULT_TIMEOUT_SECONDS,
    FORMATS,
    MAX_ACCOUNTS,
    MAX_ANSWER_MIB,
    MAX_ATTEMPTS,
    MAX_BACKOFF_SECONDS,
    MAX_CIRCUIT_BREAKER_SECONDS,
    MAX_COLLECTIONS,
    MAX_CONCURRENCY,
    MAX_REFRESH_DAYS,
    MAX_TIMEOUT_SECONDS,
    MAX_WINDOW_CALLS,
    MAX_WINDOW_SECONDS,
    REDIS_PASSWORD_ENV,
    REDIS_SCHEMES,
    SIMULATOR_BASE_URL,
    Account,
    ApiSettings,
    Collection,
    Discovery,
    Job,
    RetrySettings,
)
from harvester.layout import RESERVED_ACCOUNT_NAMES
from harvester.model import GRANULARITIES, RateLimit

__all__ = ["load_job", "parse_data", "parse_job"]


def load_job(
    source: Path | str | Mapping[str, Any],
    *,
    today: date | None = None,
    name: str | None = None,
) -> Job:
    """Read and validate a job file, or a mapping of the same shape; raise JobError.

    A mapping (an orchestrator's task config, say) gets exactly the checks and messages a file
    gets; ``name`` is what the messages call it (default ``<mapping>``).
    """
    if isinstance(source, Mapping):
        return parse_data(_plain(source), name or "<mapping>", today=today)
    path = source
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise JobError([Problem(source, "<file>", "file not found")]) from None
    except IsADirectoryError:
        raise JobError([Problem(source, "<file>", "is a directory, not a job file")]) from None
    except UnicodeDecodeError as err:
        msg = f"not UTF-8 text (bad byte at offset {err.start})"
        raise JobError([Problem(source, "<file>", msg)]) from None
    except OSError as err:
        raise JobError([Problem(source, "<file>", f"cannot read: {err.strerror}")]) from None
    return parse_job(text, source, today=today)


def _plain(value: Any) -> Any:
    """A mapping's values as YAML would give them: dicts and lists (tuples become lists)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def parse_data(data: Any, source: str, *, today: date | None = None) -> Job:
    """Validate already-parsed job data (``source`` names it in messages); raise JobError."""
    ctx = Context(source, today if today is not None else datetime.now(UTC).date())
    if not isinstance(data, dict):
        ctx.fail("<file>", f"expected a mapping of settings at the top, found {show(data)}")
        raise JobError(ctx.problems)
    job = _job(ctx, data)
    if ctx.problems or job is None:
        raise JobError(ctx.problems)
    return job


def parse_job(text: str, source: str, *, today: date | None = None) -> Job:
    """Validate job-file text (``source`` names it in messages); raise JobError."""
    ctx = Context(source, today if today is not None else datetime.now(UTC).date())
    data = load_yaml(ctx, text)
    job = _job(ctx, data) if not ctx.problems else None
    if ctx.problems or job is None:
        raise JobError(ctx.problems)
    return job


_TOP_KEYS = (
    "api",
    "concurrency",
    "retry",
    "granularity",
    "page_stats",
    "output",
    "storage",
    "format",
    "catalog",
    "refresh_days",
    "start",
    "end",
    "collections",
    "discover",
    "accounts",
)
_ACCOUNT_KEYS = (
    "name",
    "key_env",
    "secret_env",
    "base_url",
    "rate_limits",
    "rate_budget",
    "collections",
    "discover",
)
_DISCOVER_KEYS = ("status", "query", "max_collections")
_API_KEYS = (
    "base_url",
    "key_env",
    "secret_env",
    "timeout_seconds",
    "rate_limits",
    "rate_budget",
    "max_answer_mib",
)
_RETRY_KEYS = ("attempts", "max_backoff_seconds", "circuit_breaker_seconds")
_COLLECTION_KEYS = ("hash", "start", "end")
_STORAGE_KEYS = ("endpoint", "region", "allow_unfenced")


def _job(ctx: Context, data: Any) -> Job | None:
    """Check every top-level setting; None when the file is not a mapping at all."""
    top = mapping(ctx, data, "", _TOP_KEYS)
    if top is None:
        return None
    api = _api(ctx, top.get("api", ABSENT))
    concurrency = integer(
        ctx, top.get("concurrency", ABSENT), "concurrency", DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY
    )
    retry = _retry(ctx, top.get("retry", ABSENT))
    granularity = _granularity(ctx, top.get("granularity", DEFAULT_GRANULARITY))
    page_stats = top.get("page_stats", True)
    if not isinstance(page_stats, bool):
        ctx.fail("page_stats", f"expected true or false, found {show(page_stats)}")
    output = _output(ctx, top.get("output", DEFAULT_OUTPUT), _storage(ctx, top.get("storage")))
    fmt = top.get("format", DEFAULT_FORMAT)
    if fmt not in FORMATS:
        ctx.fail("format", f"expected one of {', '.join(FORMATS)}, found {show(fmt)}")
        fmt = DEFAULT_FORMAT
    catalog = parse_catalog(ctx, top.get("catalog"), fmt, output)
    refresh = integer(
        ctx,
        top.get("refresh_days", ABSENT),
        "refresh_days",
        DEFAULT_REFRESH_DAYS,
        0,
        MAX_REFRESH_DAYS,
        note="about a century",
    )
    # The job-level range, read once: discovered collections and listed ones share it.
    start = calendar_date(ctx, top["start"], "start") if "start" in top else None
    defaults = (start, calendar_date(ctx, top.get("end", "yesterday"), "end"))
    accounts: tuple[Account, ...] = ()
    if "accounts" in top:
        accounts = _accounts(ctx, top, api, defaults)
        discover = None
        collections = tuple(c for a in accounts for c in a.collections)
    else:
        discover = _discover(ctx, top, defaults)
        collections = _collections(ctx, top, defaults, discovering=discover is not None)
    return Job(
        source=Path(ctx.source),
        collections=collections,
        api=api,
        concurrency=concurrency,
        retry=retry,
        granularity=granularity,
        page_stats=page_stats is True,
        output=output,
        format=fmt,
        catalog=catalog,
        refresh_days=refresh,
        discover=discover,
        accounts=accounts,
    )


def _accounts(
    ctx: Context, top: dict[Any, Any], api: ApiSettings, defaults: tuple[date | None, date | None]
) -> tuple[Account, ...]:
    """``accounts``: a list of accounts, names unique, each hash under one account only."""
    for key in ("collections", "discover"):
        if key in top:
            ctx.fail(key, "with accounts, list collections (or discover) under each account")
    raw = top["accounts"]
    if not isinstance(raw, list) or not raw or len(raw) > MAX_ACCOUNTS:
        ctx.fail("accounts", f"expected a list of 1 to {MAX_ACCOUNTS} accounts, found {show(raw)}")
        return ()
    accounts: list[Account] = []
    names: dict[str, int] = {}
    owners: dict[str, str] = {}
    for i, item in enumerate(raw):
        account = _account(ctx, top, api, defaults, item, f"accounts[{i}]")
        if account is None:
            continue
        if account.name in names:
            ctx.fail(
                f"accounts[{i}].name",
                f"duplicate: {account.name!r} is already accounts[{names[account.name]}]",
            )
            continue
        names[account.name] = i
        for j, collection in enumerate(account.collections):
            owner = owners.setdefault(collection.hash, account.name)
            if owner != account.name:
                ctx.fail(
                    f"accounts[{i}].collections[{j}].hash",
                    f"{collection.hash!r} is already listed under account {owner!r}: "
                    "a collection belongs to one account",
                )
        accounts.append(account)
    return tuple(accounts)


def _account(
    ctx: Context,
    top: dict[Any, Any],
    api: ApiSettings,
    defaults: tuple[date | None, date | None],
    item: Any,
    path: str,
) -> Account | None:
    """One account: its name, credentials' names, optional limits and budget, collections."""
    entry = mapping(ctx, item, path, _ACCOUNT_KEYS, echo=False)
    if entry is None:
        return None
    name = entry.get("name", ABSENT)
    if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name):
        ctx.fail(
            f"{path}.name",
            "required: a label of letters, digits, '.', '_' or '-' (at most 64), "
            f"found {kind(name)}",
        )
        return None
    if name.lower() in RESERVED_ACCOUNT_NAMES:
        ctx.fail(
            f"{path}.name",
            f"{name!r} is reserved: the run-wide metrics of a job with several accounts carry"
            f" account={name.lower()!r}; choose another name",
        )
        return None
    for key in ("key_env", "secret_env"):
        if key not in entry:
            ctx.fail(f"{path}.{key}", "required: the NAME of the variable holding it")
    key_env = _env_name(ctx, entry.get("key_env", api.key_env), f"{path}.key_env")
    secret_env = _env_name(ctx, entry.get("secret_env", api.secret_env), f"{path}.secret_env")
    if key_env and key_env == secret_env:
        ctx.fail(f"{path}.secret_env", "names the same variable as key_env")
    base_url = entry.get("base_url", api.base_url)
    if not _valid_base_url(base_url) or "@" in str(base_url):
        ctx.fail(f"{path}.base_url", "expected an http(s):// URL without credentials")
        base_url = api.base_url
    limits = api.rate_limits
    if "rate_limits" in entry:
        limits = _rate_limits(ctx, entry["rate_limits"], f"{path}.rate_limits")
    budget = api.rate_budget
    if "rate_budget" in entry:
        budget = _rate_budget(ctx, entry["rate_budget"], f"{path}.rate_budget")
    settings = replace(
        api,
        base_url=str(base_url),
        key_env=key_env,
        secret_env=secret_env,
        rate_limits=limits,
        rate_budget=budget,
    )
    at = f"{path}."
    discover = _discover(ctx, top, defaults, section=entry, at=at)
    collections = _collections(
        ctx, top, defaults, discovering=discover is not None, section=entry, at=at
    )
    return Account(name, settings, collections, discover)


def _output(ctx: Context, raw: Any, storage: StorageOptions) -> Location:
    """The output: a folder (a leading ``~`` is the home folder) or ``s3://bucket/prefix``."""
    default = Location.local(DEFAULT_OUTPUT)
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        ctx.fail("output", f"expected a non-empty folder path, found {show(raw)}")
        return default
    try:
        return Location.parse(raw, storage)
    except ValueError as exc:
        ctx.fail("output", str(exc))
        return default
    except RuntimeError:  # no HOME, or no such user
        user = raw.split("/", 1)[0]
        ctx.fail("output", f"cannot expand {user!r}: no such user, or no home folder is known")
        return default


def _storage(ctx: Context, raw: Any) -> StorageOptions:
    """``storage: {endpoint, region, allow_unfenced}``: an S3-compatible store's address, instead
    of the environment, and whether a store that ignores conditional writes may be written."""
    if raw is None:
        return StorageOptions()
    block = mapping(ctx, raw, "storage", _STORAGE_KEYS)
    if block is None:
        return StorageOptions()
    values: dict[str, str | None] = {}
    for key in ("endpoint", "region"):
        value = block.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            ctx.fail(f"storage.{key}", f"expected a non-empty text, found {show(value)}")
            value = None
        values[key] = value
    endpoint = values["endpoint"]
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        ctx.fail("storage.endpoint", f"expected an http:// or https:// URL, found {endpoint!r}")
        endpoint = None
    unfenced = block.get("allow_unfenced", False)
    if not isinstance(unfenced, bool):
        ctx.fail("storage.allow_unfenced", f"expected true or false, found {show(unfenced)}")
    return StorageOptions(endpoint, values["region"], allow_unfenced=unfenced is True)


def _discover(
    ctx: Context,
    top: dict[Any, Any],
    defaults: tuple[date | None, date | None],
    *,
    section: dict[Any, Any] | None = None,
    at: str = "",
) -> Discovery | None:
    """``discover: true`` or ``discover: {status, query}``: every collection of the account.

    ``section`` holds the setting (an account's, at path ``at``); the job's top level by default.
    """
    raw = (top if section is None else section).get("discover", False)
    if raw is False:
        return None
    if raw is True:
        raw = {}
    settings = mapping(ctx, raw, f"{at}discover", _DISCOVER_KEYS)
    if settings is None:
        return None
    status = settings.get("status")
    if status is not None and status not in COLLECTION_STATUSES:
        ctx.fail(
            f"{at}discover.status",
            f"expected one of {', '.join(COLLECTION_STATUSES)}, found {show(status)}",
        )
    query = settings.get("query")
    if query is not None and not isinstance(query, str):
        ctx.fail(f"{at}discover.query", f"expected a search text, found {show(query)}")
    if "start" not in top:
        ctx.fail("start", "required with discover: discovered collections use the job's range")
        return None
    most = integer(
        ctx,
        settings.get("max_collections", ABSENT),
        f"{at}discover.max_collections",
        DEFAULT_MAX_COLLECTIONS,
        1,
        MAX_COLLECTIONS,
    )
    first, last = defaults
    if first is None or last is None:
        return None
    if first > last:
        ctx.fail("start", f"start {first.isoformat()} is after end {last.isoformat()}")
        return None
    return Discovery(first, last, status, query if isinstance(query, str) else None, most)


def _api(ctx: Context, raw: Any) -> ApiSettings:
    """The ``api`` section; values other than base_url/timeout/limits are never echoed."""
    if raw is ABSENT:
        return ApiSettings()
    api = mapping(ctx, raw, "api", _API_KEYS, echo=False)
    if api is None:
        return ApiSettings()
    base_url = api.get("base_url", DEFAULT_BASE_URL)
    if isinstance(base_url, str) and "@" in base_url:  # user:password@host: don't echo it
        ctx.fail(
            "api.base_url",
            "must not hold credentials (user:password@); set them in "
            "the environment variables named by api.key_env / api.secret_env",
        )
    elif not _valid_base_url(base_url):
        ctx.fail(
            "api.base_url",
            f"expected an http(s):// URL or {SIMULATOR_BASE_URL!r}, found {show(base_url)}",
        )
    key_env = _env_name(ctx, api.get("key_env", DEFAULT_KEY_ENV), "api.key_env")
    secret_env = _env_name(ctx, api.get("secret_env", DEFAULT_SECRET_ENV), "api.secret_env")
    if key_env and key_env == secret_env:
        ctx.fail(
            "api.secret_env",
            "names the same variable as api.key_env; the key and the secret need one variable each",
        )
    timeout = positive(
        ctx,
        api.get("timeout_seconds", ABSENT),
        "api.timeout_seconds",
        DEFAULT_TIMEOUT_SECONDS,
        MAX_TIMEOUT_SECONDS,
        note="an hour",
    )
    limits = _rate_limits(ctx, api.get("rate_limits", ABSENT))
    budget = _rate_budget(ctx, api.get("rate_budget"), "api.rate_budget")
    cap = _answer_cap(ctx, api.get("max_answer_mib", ABSENT))
    return ApiSettings(str(base_url), key_env, secret_env, timeout, limits, budget, cap)


def _answer_cap(ctx: Context, raw: Any) -> float:
    """``api.max_answer_mib``: a number of MiB > 0 and at most :data:`MAX_ANSWER_MIB`."""
    if raw is ABSENT:
        return DEFAULT_MAX_ANSWER_MIB
    wanted = f"a number of MiB > 0 and at most {MAX_ANSWER_MIB:g}"
    if type(raw) not in (int, float) or not 0 < raw <= MAX_ANSWER_MIB:  # NaN fails too
        number = type(raw) in (int, float)  # anything else may be a pasted secret: no echo
        ctx.fail("api.max_answer_mib", f"expected {wanted}, found {show(raw, echo=number)}")
        return DEFAULT_MAX_ANSWER_MIB
    return float(raw)


def _rate_budget(ctx: Context, raw: Any, path: str) -> str | None:
    """``rate_budget``: absent (the host's budget file) or a ``redis://host:port/db`` URL.

    A password belongs in the environment (:data:`REDIS_PASSWORD_ENV`), not the job file, and
    a URL that holds one is never echoed.
    """
    if raw is None:
        return None
    if isinstance(raw, str) and "@" in raw:
        ctx.fail(path, f"must not hold credentials (user:password@); set {REDIS_PASSWORD_ENV}")
        return None
    try:
        parts = urlsplit(raw) if isinstance(raw, str) else None
        valid = parts is not None and parts.scheme in REDIS_SCHEMES and bool(parts.hostname)
        _ = parts.port if parts is not None else None  # a port that is not a number raises
    except ValueError:
        valid = False
    if not valid:
        ctx.fail(path, f"expected a redis://host:port/db URL, found {show(raw)}")
        return None
    return str(raw)


def _valid_base_url(value: Any) -> bool:
    """``simulator`` or an absolute http(s) URL with a host and no whitespace."""
    if value == SIMULATOR_BASE_URL:
        return True
    if not isinstance(value, str) or re.search(r"\s", value):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return False


def _env_name(ctx: Context, raw: Any, path: str) -> str:
    """An environment-variable NAME; anything else may be a pasted secret, so never echo it."""
    if isinstance(raw, str) and ENV_NAME.fullmatch(raw):
        return raw
    ctx.fail(
        path,
        f"expected the NAME of an environment variable (like {DEFAULT_KEY_ENV}); "
        f"this {kind(raw)} is not one. If it is a literal credential, move it into an "
        "environment variable and put that variable's name here",
    )
    return ""


def _rate_limits(ctx: Context, raw: Any, where: str = "api.rate_limits") -> tuple[RateLimit, ...]:
    """``api.rate_limits``: a non-empty list of ``{calls, seconds}``, all enforced at once."""
    if raw is ABSENT:
        return DEFAULT_RATE_LIMITS
    if not isinstance(raw, list) or not raw:
        ctx.fail(
            where,
            f"expected a non-empty list of {{calls: N, seconds: S}}, found {show(raw)}",
        )
        return DEFAULT_RATE_LIMITS
    limits = []
    for i, item in enumerate(raw):
        path = f"{where}[{i}]"
        limit = mapping(ctx, item, path, ("calls", "seconds"))
        if limit is None:
            continue
        for key in ("calls", "seconds"):
            if key not in limit:
                ctx.fail(f"{path}.{key}", "required")
        calls = integer(ctx, limit.get("calls", ABSENT), f"{path}.calls", 1, 1, MAX_WINDOW_CALLS)
        seconds = positive(
            ctx,
            limit.get("seconds", ABSENT),
            f"{path}.seconds",
            1.0,
            MAX_WINDOW_SECONDS,
            note="31 days",
        )
        limits.append(RateLimit(calls, seconds))
    return tuple(limits)


def _retry(ctx: Context, raw: Any) -> RetrySettings:
    """The ``retry`` section."""
    if raw is ABSENT:
        return RetrySettings()
    retry = mapping(ctx, raw, "retry", _RETRY_KEYS)
    if retry is None:
        return RetrySettings()
    return RetrySettings(
        integer(
            ctx, retry.get("attempts", ABSENT), "retry.attempts", DEFAULT_ATTEMPTS, 1, MAX_ATTEMPTS
        ),
        positive(
            ctx,
            retry.get("max_backoff_seconds", ABSENT),
            "retry.max_backoff_seconds",
            DEFAULT_MAX_BACKOFF_SECONDS,
            MAX_BACKOFF_SECONDS,
            note="a day",
        ),
        positive(
            ctx,
            retry.get("circuit_breaker_seconds", ABSENT),
            "retry.circuit_breaker_seconds",
            DEFAULT_CIRCUIT_BREAKER_SECONDS,
            MAX_CIRCUIT_BREAKER_SECONDS,
            note="a week",
        ),
    )


def _granularity(ctx: Context, raw: Any) -> str:
    """One of GRANULARITIES, with a did-you-mean for near misses."""
    if raw in GRANULARITIES:
        return str(raw)
    close = difflib.get_close_matches(raw, GRANULARITIES, n=1) if isinstance(raw, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    ctx.fail("granularity", f"expected one of {', '.join(GRANULARITIES)}, found {show(raw)}{hint}")
    return DEFAULT_GRANULARITY


def _collections(
    ctx: Context,
    top: dict[Any, Any],
    defaults: tuple[date | None, date | None],
    *,
    discovering: bool = False,
    section: dict[Any, Any] | None = None,
    at: str = "",
) -> tuple[Collection, ...]:
    """The collections, each with its own range or the job-level defaults; hashes unique.

    With ``discover``, the list may be absent or empty: the account's collections are added at
    run time, and listed ones keep their own ranges. ``section`` is the mapping that holds the
    list (an account's, ``at`` its path with a trailing dot); the job's top level by default.
    """
    raw = (top if section is None else section).get("collections", ABSENT)
    where = f"{at}collections"
    if discovering and (raw is ABSENT or raw == []):
        return ()
    if raw is ABSENT:
        ctx.fail(where, "required: a list of collections, e.g. '- hash: d3m0h45h'")
        return ()
    if not isinstance(raw, list) or not raw:
        ctx.fail(where, f"expected a non-empty list of collections, found {show(raw)}")
        return ()
    result: list[Collection] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        name, first, last = _collection(ctx, item, f"{where}[{i}]", defaults)
        if name is None:
            continue
        if name in seen:
            ctx.fail(
                f"{where}[{i}].hash",
                f"duplicate: {name!r} is already {where}[{seen[name]}]",
            )
            continue
        seen[name] = i
        if first is not None and last is not None:
            result.append(Collection(name, first, last))
    _check_defaults_used(ctx, top, raw, defaults, at=at)
    return tuple(result)


def _collection(
    ctx: Context, item: Any, path: str, defaults: tuple[date | None, date | None]
) -> tuple[str | None, date | None, date | None]:
    """One entry: a bare hash or ``{hash, start, end}``; None for whatever is invalid."""
    entry = mapping(ctx, item, path, _COLLECTION_KEYS) if isinstance(item, dict) else None
    if entry is None:  # shorthand: a bare hash over the job's range
        name = _hash(ctx, item, path)
        first, last = defaults
    else:
        name = _hash(ctx, entry.get("hash", ABSENT), f"{path}.hash")
        first = (
            calendar_date(ctx, entry["start"], f"{path}.start") if "start" in entry else defaults[0]
        )
        last = calendar_date(ctx, entry["end"], f"{path}.end") if "end" in entry else defaults[1]
    if first is None or last is None or first <= last:
        return name, first, last
    if entry is not None and ("start" in entry or "end" in entry):  # else: see _check_defaults
        ctx.fail(path, f"start {first.isoformat()} is after end {last.isoformat()}")
    return name, None, None


def _check_defaults_used(
    ctx: Context,
    top: dict[Any, Any],
    items: list[Any],
    defaults: tuple[date | None, date | None],
    *,
    at: str = "",
) -> None:
    """Report a missing or inverted job-level range once, not once per collection using it."""
    uses_start = [
        f"{at}collections[{i}]"
        for i, item in enumerate(items)
        if not (isinstance(item, dict) and "start" in item)
    ]
    both = [
        i
        for i, item in enumerate(items)
        if not (isinstance(item, dict) and ("start" in item or "end" in item))
    ]
    if uses_start and "start" not in top:
        more = f" and {len(uses_start) - 5} more" if len(uses_start) > 5 else ""
        ctx.fail(
            "start",
            f"required: {', '.join(uses_start[:5])}{more} give no start of "
            "their own; set a job-level start, or one per collection",
        )
    first, last = defaults
    if both and first is not None and last is not None and first > last:
        ctx.fail(
            "start",
            f"start {first.isoformat()} is after end {last.isoformat()} "
            f"(the job-level range, used by collections[{both[0]}] and any others "
            "that give neither start nor end)",
        )


def _hash(ctx: Context, raw: Any, path: str) -> str | None:
    """A flipbook hash: 1-64 of A-Z a-z 0-9 _ -; numbers and dates get a 'quote it' hint."""
    if raw is ABSENT:
        ctx.fail(path, "required: the collection's hash")
    elif not isinstance(raw, str):
        quote = isinstance(raw, int | float | date)  # bool is an int: `yes` needs quotes too
        hint = "; YAML did not read it as text: put the hash in quotes" if quote else ""
        ctx.fail(path, f"expected a hash (a string), found {show(raw)}{hint}")
    elif not HASH.fullmatch(raw):
        ctx.fail(path, f"expected 1-64 letters, digits, '_' or '-', found {show(raw)}")
    else:
        return raw
    return None
