"""YAML job file → frozen, typed job objects. All validation of user input lives here.

Every problem is reported as a :class:`~harvester.errors.Problem` naming the file, the field
path and what was expected; all problems of a file are collected and raised together as one
:class:`~harvester.errors.JobError` (exit 2). Nothing downstream touches raw dicts.

Credentials never live in the job file: it names the environment variables that hold them, and
no message ever echoes a value found under ``api`` (a mistyped key may be a real secret) except
the harmless ``base_url``, ``timeout_seconds`` and ``rate_limits``.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from harvester.errors import JobError, Problem

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "GRANULARITIES",
    "SIMULATOR_BASE_URL",
    "ApiSettings",
    "Collection",
    "Credentials",
    "Job",
    "RateLimit",
    "RetrySettings",
    "load_credentials",
    "load_job",
    "parse_job",
]

DEFAULT_BASE_URL = "https://api.flipsnack.com/v1/"
SIMULATOR_BASE_URL = "simulator"  # start the bundled simulator in-process (the demo)
DEFAULT_KEY_ENV = "FLIPSNACK_API_KEY"
DEFAULT_SECRET_ENV = "FLIPSNACK_API_SECRET"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CONCURRENCY = 4
DEFAULT_ATTEMPTS = 6
DEFAULT_MAX_BACKOFF_SECONDS = 60.0
DEFAULT_CIRCUIT_BREAKER_SECONDS = 600.0
DEFAULT_GRANULARITY = "day"
DEFAULT_OUTPUT = "output"
DEFAULT_REFRESH_DAYS = 0
GRANULARITIES = ("day", "week", "month", "range")

MAX_CONCURRENCY = 1000
MAX_ATTEMPTS = 100


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``calls`` calls in any ``seconds``-long sliding window."""

    calls: int
    seconds: float


DEFAULT_RATE_LIMITS = (RateLimit(5, 1.0), RateLimit(60, 60.0))


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Where the API is and how to talk to it; credentials are named, never held."""

    base_url: str = DEFAULT_BASE_URL
    key_env: str = DEFAULT_KEY_ENV
    secret_env: str = DEFAULT_SECRET_ENV
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    rate_limits: tuple[RateLimit, ...] = DEFAULT_RATE_LIMITS

    @property
    def uses_simulator(self) -> bool:
        """True when the job asks for the bundled, in-process simulator."""
        return self.base_url == SIMULATOR_BASE_URL


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Per-unit attempts and backoff cap; the run-wide circuit breaker window."""

    attempts: int = DEFAULT_ATTEMPTS
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS
    circuit_breaker_seconds: float = DEFAULT_CIRCUIT_BREAKER_SECONDS


@dataclass(frozen=True, slots=True)
class Collection:
    """One flipbook to harvest over an inclusive date range."""

    hash: str
    start: date
    end: date


@dataclass(frozen=True, slots=True)
class Job:
    """A validated job file."""

    source: Path
    collections: tuple[Collection, ...]
    api: ApiSettings = field(default_factory=ApiSettings)
    concurrency: int = DEFAULT_CONCURRENCY
    retry: RetrySettings = field(default_factory=RetrySettings)
    granularity: str = DEFAULT_GRANULARITY
    page_stats: bool = True
    output: Path = Path(DEFAULT_OUTPUT)
    refresh_days: int = DEFAULT_REFRESH_DAYS


@dataclass(frozen=True, slots=True)
class Credentials:
    """The API key and secret; ``repr`` never shows them."""

    key: str
    secret: str

    def __repr__(self) -> str:
        return "Credentials(key='***', secret='***')"

    __str__ = __repr__


# --- the public entry points -----------------------------------------------------------------


def load_job(path: Path, *, today: date | None = None) -> Job:
    """Read and validate a job file; raise JobError listing every problem found."""
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


def parse_job(text: str, source: str, *, today: date | None = None) -> Job:
    """Validate job-file text (``source`` names it in messages); raise JobError."""
    ctx = _Context(source, today if today is not None else datetime.now(UTC).date())
    data = _load_yaml(ctx, text)
    job = _job(ctx, data) if not ctx.problems else None
    if ctx.problems or job is None:
        raise JobError(ctx.problems)
    return job


def load_credentials(api: ApiSettings, env: Mapping[str, str]) -> Credentials:
    """Read the key and secret from the variables the job names (or ``<NAME>_FILE``)."""
    problems: list[Problem] = []
    key = _credential(api.key_env, "API key", env, problems)
    secret = _credential(api.secret_env, "API secret", env, problems)
    if problems:
        raise JobError(problems)
    return Credentials(key, secret)


def _credential(name: str, what: str, env: Mapping[str, str], problems: list[Problem]) -> str:
    """One credential from ``env[name]``, else from the file ``env[name + '_FILE']`` names."""
    value = env.get(name, "").strip()
    if value:
        return value
    file_var = f"{name}_FILE"
    path = env.get(file_var, "").strip()
    if not path:
        hint = f"export {name}=<your {what}>, or set {file_var} to a file that holds it"
        problems.append(Problem("environment", name, f"not set or empty: {hint}"))
        return ""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        msg = f"{name} is unset and the file {path!r} named by {file_var} is unreadable: {reason}"
        problems.append(Problem("environment", file_var, msg))
        return ""
    if not value:
        msg = f"{name} is unset and the file {path!r} named by {file_var} is empty"
        problems.append(Problem("environment", file_var, msg))
    return value


# --- reading YAML ----------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and keeps impossible dates (2026-02-30) as text."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping; a key given twice is an error (YAML would silently keep the last)."""
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key_node.value[:40]!r} is given twice",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        """A date or datetime, or the raw text when the calendar says no."""
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def _load_yaml(ctx: _Context, text: str) -> Any:
    """The parsed document, or None after recording why there is none."""
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(p for p in (err.context, err.problem) if p) or "syntax error"
        ctx.fail("<yaml>", f"invalid YAML{where}: {what}")
        return None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        ctx.fail("<yaml>", f"invalid YAML at line {line}, column {column}: character "
                 f"#x{err.character:04x} is not allowed ({err.reason})")
        return None
    except yaml.YAMLError as err:
        ctx.fail("<yaml>", f"invalid YAML: {err}")
        return None
    except RecursionError:
        ctx.fail("<yaml>", "invalid YAML: nested too deeply")
        return None
    if data is None:
        ctx.fail("<file>", "the file is empty: expected a job mapping with at least 'collections:'")
    elif not isinstance(data, dict):
        ctx.fail("<file>", f"expected a mapping of settings at the top, found {_show(data)}")
    return data


# --- the checker -----------------------------------------------------------------------------

_ABSENT: Any = object()  # a key the file does not give
_HASH = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RELATIVE = re.compile(r"-(\d{1,7})d")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIMESTAMP = re.compile(r"\s*\d{4}-\d\d?-\d\d?[Tt ]+\d")  # YAML leaves some of these as text
_SECRET_NAMES = {"key", "apikey", "secret", "apisecret", "secretkey", "password", "passwd",
                 "token", "apitoken", "accesstoken", "authtoken", "credentials", "auth"}
_SECRET_WORDS = re.compile(r"secret|passw|token|apikey|credential")
_BOOL_HINT = " (YAML reads yes/no/on/off/true/false as booleans)"
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 2, 40, 40  # bounded even for alias bombs


@dataclass(slots=True)
class _Context:
    """Where problems are collected while one file is checked."""

    source: str
    today: date
    problems: list[Problem] = field(default_factory=list)

    def fail(self, path: str, message: str) -> None:
        """Record one problem at the dotted ``path``."""
        self.problems.append(Problem(self.source, path, message))


def _kind(value: Any) -> str:
    """A YAML-flavoured type name for messages."""
    if value is None:
        return "null"
    if isinstance(value, datetime):
        return "date-time"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
             dict: "mapping", date: "date"}
    return names.get(type(value), type(value).__name__)


def _show(value: Any, *, echo: bool = True) -> str:
    """``kind value`` (truncated); only the kind when the value may be a secret."""
    if not echo or value is None:
        return _kind(value)
    text = _repr.repr(value.isoformat() if isinstance(value, date) else value)
    return f"{_kind(value)} {text[:40] + '...' if len(text) > 40 else text}"


def _join(path: str, key: object) -> str:
    """``api`` + ``timeout`` → ``api.timeout``."""
    name = key if isinstance(key, str) else repr(key)
    return f"{path}.{name}" if path else name


def _mapping(ctx: _Context, value: Any, path: str, known: tuple[str, ...],
             *, echo: bool = True) -> dict[Any, Any] | None:
    """``value`` if it is a mapping whose keys are all known; record every stray key."""
    if not isinstance(value, dict):
        ctx.fail(path, f"expected a mapping, found {_show(value, echo=echo)}")
        return None
    for key in value:
        if key not in known:
            _unknown_key(ctx, path, key, known)
    return value


def _unknown_key(ctx: _Context, path: str, key: object, known: tuple[str, ...]) -> None:
    """Refuse a key; never echo its value (it may be a credential someone pasted)."""
    name = key if isinstance(key, str) else repr(key)
    name = name if len(name) <= 64 else name[:40] + "..."
    folded = re.sub(r"[\W_]", "", name.lower())
    close = difflib.get_close_matches(name, known, n=1)
    if folded in _SECRET_NAMES or (not close and _SECRET_WORDS.search(folded)):
        ctx.fail(_join(path, name), "credentials must not be in the job file: put the value in "
                 "an environment variable and name it with api.key_env / api.secret_env")
        return
    hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
    ctx.fail(_join(path, name), f"unknown key {name!r}{hint}")


def _int(ctx: _Context, raw: Any, path: str, default: int, low: int,
         high: int | None = None) -> int:
    """An integer in ``low..high`` (``bool`` is not one), else the default after a problem."""
    if raw is _ABSENT:
        return default
    wanted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if type(raw) is not int:
        hint = _BOOL_HINT if isinstance(raw, bool) else ""
        ctx.fail(path, f"expected {wanted}, found {_show(raw)}{hint}")
    elif raw < low or (high is not None and raw > high):
        ctx.fail(path, f"expected {wanted}, found {raw}")
    else:
        return raw
    return default


def _positive(ctx: _Context, raw: Any, path: str, default: float) -> float:
    """A finite number > 0 (seconds), else the default after a problem."""
    if raw is _ABSENT:
        return default
    if type(raw) not in (int, float):
        hint = _BOOL_HINT if isinstance(raw, bool) else ""
        ctx.fail(path, f"expected a number of seconds > 0, found {_show(raw)}{hint}")
    elif not math.isfinite(raw) or raw <= 0:
        ctx.fail(path, f"expected a finite number of seconds > 0, found {raw}")
    else:
        return float(raw)
    return default


def _date(ctx: _Context, raw: Any, path: str) -> date | None:
    """An ISO date, ``today``, ``yesterday`` or ``-Nd`` (UTC calendar days), else None."""
    if isinstance(raw, datetime) or (isinstance(raw, str) and _TIMESTAMP.match(raw)):
        ctx.fail(path, f"expected a date without a time of day, found {_show(raw)}")
        return None
    if isinstance(raw, date):
        return raw
    wanted = "an ISO date (YYYY-MM-DD), today, yesterday or -Nd (N days ago)"
    if not isinstance(raw, str):
        ctx.fail(path, f"expected {wanted}, found {_show(raw)}")
        return None
    text = raw.strip().lower()
    relative = _RELATIVE.fullmatch(text)
    days = {"today": 0, "yesterday": 1}.get(text, int(relative[1]) if relative else None)
    try:
        if days is not None:
            return ctx.today - timedelta(days=days)
        if _ISO_DATE.fullmatch(text):
            return date.fromisoformat(text)
    except OverflowError:
        ctx.fail(path, f"{raw!r} is before year 1")
        return None
    except ValueError as err:
        ctx.fail(path, f"not a real calendar date: {raw!r} ({err})")
        return None
    ctx.fail(path, f"expected {wanted}, found {_show(raw)}")
    return None


# --- the sections ----------------------------------------------------------------------------

_TOP_KEYS = ("api", "concurrency", "retry", "granularity", "page_stats", "output",
             "refresh_days", "start", "end", "collections")
_API_KEYS = ("base_url", "key_env", "secret_env", "timeout_seconds", "rate_limits")
_RETRY_KEYS = ("attempts", "max_backoff_seconds", "circuit_breaker_seconds")
_COLLECTION_KEYS = ("hash", "start", "end")


def _job(ctx: _Context, data: Any) -> Job | None:
    """Check every top-level setting; None when the file is not a mapping at all."""
    top = _mapping(ctx, data, "", _TOP_KEYS)
    if top is None:
        return None
    api = _api(ctx, top.get("api", _ABSENT))
    concurrency = _int(ctx, top.get("concurrency", _ABSENT), "concurrency",
                       DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY)
    retry = _retry(ctx, top.get("retry", _ABSENT))
    granularity = _granularity(ctx, top.get("granularity", DEFAULT_GRANULARITY))
    page_stats = top.get("page_stats", True)
    if not isinstance(page_stats, bool):
        ctx.fail("page_stats", f"expected true or false, found {_show(page_stats)}")
    output = top.get("output", DEFAULT_OUTPUT)
    if not isinstance(output, str) or not output.strip() or "\0" in output:
        ctx.fail("output", f"expected a non-empty folder path, found {_show(output)}")
    refresh = _int(ctx, top.get("refresh_days", _ABSENT), "refresh_days", DEFAULT_REFRESH_DAYS, 0)
    collections = _collections(ctx, top)
    return Job(source=Path(ctx.source), collections=collections, api=api,
               concurrency=concurrency, retry=retry, granularity=granularity,
               page_stats=page_stats is True, output=Path(str(output)), refresh_days=refresh)


def _api(ctx: _Context, raw: Any) -> ApiSettings:
    """The ``api`` section; values other than base_url/timeout/limits are never echoed."""
    if raw is _ABSENT:
        return ApiSettings()
    api = _mapping(ctx, raw, "api", _API_KEYS, echo=False)
    if api is None:
        return ApiSettings()
    base_url = api.get("base_url", DEFAULT_BASE_URL)
    if isinstance(base_url, str) and "@" in base_url:  # user:password@host: don't echo it
        ctx.fail("api.base_url", "must not hold credentials (user:password@); set them in "
                 "the environment variables named by api.key_env / api.secret_env")
    elif not _valid_base_url(base_url):
        ctx.fail("api.base_url", f"expected an http(s):// URL or {SIMULATOR_BASE_URL!r}, "
                 f"found {_show(base_url)}")
    key_env = _env_name(ctx, api.get("key_env", DEFAULT_KEY_ENV), "api.key_env")
    secret_env = _env_name(ctx, api.get("secret_env", DEFAULT_SECRET_ENV), "api.secret_env")
    if key_env and key_env == secret_env:
        ctx.fail("api.secret_env", "names the same variable as api.key_env; the key and the "
                 "secret need one variable each")
    timeout = _positive(ctx, api.get("timeout_seconds", _ABSENT), "api.timeout_seconds",
                        DEFAULT_TIMEOUT_SECONDS)
    limits = _rate_limits(ctx, api.get("rate_limits", _ABSENT))
    return ApiSettings(str(base_url), key_env, secret_env, timeout, limits)


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


def _env_name(ctx: _Context, raw: Any, path: str) -> str:
    """An environment-variable NAME; anything else may be a pasted secret, so never echo it."""
    if isinstance(raw, str) and _ENV_NAME.fullmatch(raw):
        return raw
    ctx.fail(path, f"expected the NAME of an environment variable (like {DEFAULT_KEY_ENV}); "
             f"this {_kind(raw)} is not one. If it is a literal credential, move it into an "
             "environment variable and put that variable's name here")
    return ""


def _rate_limits(ctx: _Context, raw: Any) -> tuple[RateLimit, ...]:
    """``api.rate_limits``: a non-empty list of ``{calls, seconds}``, all enforced at once."""
    if raw is _ABSENT:
        return DEFAULT_RATE_LIMITS
    if not isinstance(raw, list) or not raw:
        ctx.fail("api.rate_limits", "expected a non-empty list of {calls: N, seconds: S}, "
                 f"found {_show(raw)}")
        return DEFAULT_RATE_LIMITS
    limits = []
    for i, item in enumerate(raw):
        path = f"api.rate_limits[{i}]"
        limit = _mapping(ctx, item, path, ("calls", "seconds"))
        if limit is None:
            continue
        for key in ("calls", "seconds"):
            if key not in limit:
                ctx.fail(f"{path}.{key}", "required")
        calls = _int(ctx, limit.get("calls", _ABSENT), f"{path}.calls", 1, 1)
        seconds = _positive(ctx, limit.get("seconds", _ABSENT), f"{path}.seconds", 1.0)
        limits.append(RateLimit(calls, seconds))
    return tuple(limits)


def _retry(ctx: _Context, raw: Any) -> RetrySettings:
    """The ``retry`` section."""
    if raw is _ABSENT:
        return RetrySettings()
    retry = _mapping(ctx, raw, "retry", _RETRY_KEYS)
    if retry is None:
        return RetrySettings()
    return RetrySettings(
        _int(ctx, retry.get("attempts", _ABSENT), "retry.attempts", DEFAULT_ATTEMPTS, 1,
             MAX_ATTEMPTS),
        _positive(ctx, retry.get("max_backoff_seconds", _ABSENT), "retry.max_backoff_seconds",
                  DEFAULT_MAX_BACKOFF_SECONDS),
        _positive(ctx, retry.get("circuit_breaker_seconds", _ABSENT),
                  "retry.circuit_breaker_seconds", DEFAULT_CIRCUIT_BREAKER_SECONDS),
    )


def _granularity(ctx: _Context, raw: Any) -> str:
    """One of GRANULARITIES, with a did-you-mean for near misses."""
    if raw in GRANULARITIES:
        return str(raw)
    close = difflib.get_close_matches(raw, GRANULARITIES, n=1) if isinstance(raw, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    ctx.fail("granularity", f"expected one of {', '.join(GRANULARITIES)}, found {_show(raw)}{hint}")
    return DEFAULT_GRANULARITY


def _collections(ctx: _Context, top: dict[Any, Any]) -> tuple[Collection, ...]:
    """The collections, each with its own range or the job-level defaults; hashes unique."""
    start = _date(ctx, top["start"], "start") if "start" in top else None
    defaults = (start, _date(ctx, top.get("end", "yesterday"), "end"))
    raw = top.get("collections", _ABSENT)
    if raw is _ABSENT:
        ctx.fail("collections", "required: a list of collections, e.g. '- hash: d3m0h45h'")
        return ()
    if not isinstance(raw, list) or not raw:
        ctx.fail("collections", f"expected a non-empty list of collections, found {_show(raw)}")
        return ()
    result: list[Collection] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        name, first, last = _collection(ctx, item, f"collections[{i}]", defaults)
        if name is None:
            continue
        if name in seen:
            ctx.fail(f"collections[{i}].hash",
                     f"duplicate: {name!r} is already collections[{seen[name]}]")
            continue
        seen[name] = i
        if first is not None and last is not None:
            result.append(Collection(name, first, last))
    _check_defaults_used(ctx, top, raw, defaults)
    return tuple(result)


def _collection(ctx: _Context, item: Any, path: str,
                defaults: tuple[date | None, date | None]) -> tuple[str | None, date | None,
                                                                     date | None]:
    """One entry: a bare hash or ``{hash, start, end}``; None for whatever is invalid."""
    entry = _mapping(ctx, item, path, _COLLECTION_KEYS) if isinstance(item, dict) else None
    if entry is None:  # shorthand: a bare hash over the job's range
        name = _hash(ctx, item, path)
        first, last = defaults
    else:
        name = _hash(ctx, entry.get("hash", _ABSENT), f"{path}.hash")
        first = _date(ctx, entry["start"], f"{path}.start") if "start" in entry else defaults[0]
        last = _date(ctx, entry["end"], f"{path}.end") if "end" in entry else defaults[1]
    if first is None or last is None or first <= last:
        return name, first, last
    if entry is not None and ("start" in entry or "end" in entry):  # else: see _check_defaults
        ctx.fail(path, f"start {first.isoformat()} is after end {last.isoformat()}")
    return name, None, None


def _check_defaults_used(ctx: _Context, top: dict[Any, Any], items: list[Any],
                         defaults: tuple[date | None, date | None]) -> None:
    """Report a missing or inverted job-level range once, not once per collection using it."""
    uses_start = [f"collections[{i}]" for i, item in enumerate(items)
                  if not (isinstance(item, dict) and "start" in item)]
    both = [i for i, item in enumerate(items)
            if not (isinstance(item, dict) and ("start" in item or "end" in item))]
    if uses_start and "start" not in top:
        more = f" and {len(uses_start) - 5} more" if len(uses_start) > 5 else ""
        ctx.fail("start", f"required: {', '.join(uses_start[:5])}{more} give no start of "
                 "their own; set a job-level start, or one per collection")
    first, last = defaults
    if both and first is not None and last is not None and first > last:
        ctx.fail("start", f"start {first.isoformat()} is after end {last.isoformat()} "
                 f"(the job-level range, used by collections[{both[0]}] and any others "
                 "that give neither start nor end)")


def _hash(ctx: _Context, raw: Any, path: str) -> str | None:
    """A flipbook hash: 1-64 of A-Z a-z 0-9 _ -; numbers and dates get a 'quote it' hint."""
    if raw is _ABSENT:
        ctx.fail(path, "required: the collection's hash")
    elif not isinstance(raw, str):
        quote = isinstance(raw, int | float | date)  # bool is an int: `yes` needs quotes too
        hint = "; YAML did not read it as text: put the hash in quotes" if quote else ""
        ctx.fail(path, f"expected a hash (a string), found {_show(raw)}{hint}")
    elif not _HASH.fullmatch(raw):
        ctx.fail(path, f"expected 1-64 letters, digits, '_' or '-', found {_show(raw)}")
    else:
        return raw
    return None
