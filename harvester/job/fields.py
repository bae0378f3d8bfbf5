"""The building blocks of job-file validation: YAML loading and typed field readers.

Each reader takes the raw value and its dotted path, records a :class:`~harvester.errors.Problem`
in the :class:`Context` when the value is wrong, and returns a usable value either way, so that
one pass reports every problem of a file. :mod:`harvester.job.model` assembles the job from them.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import yaml

from harvester.errors import Problem

# --- reading YAML ----------------------------------------------------------------------------


class Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and keeps impossible dates (2026-02-30) as text."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping; a key given twice is an error (YAML would silently keep the last)."""
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key {key_node.value[:40]!r} is given twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        """A date or datetime, or the raw text when the calendar says no."""
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


Loader.add_constructor("tag:yaml.org,2002:timestamp", Loader.construct_yaml_timestamp)


def load_yaml(ctx: Context, text: str) -> Any:
    """The parsed document, or None after recording why there is none."""
    try:
        data = yaml.load(text, Loader=Loader)  # Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(p for p in (err.context, err.problem) if p) or "syntax error"
        ctx.fail("<yaml>", f"invalid YAML{where}: {what}")
        return None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        ctx.fail(
            "<yaml>",
            f"invalid YAML at line {line}, column {column}: character "
            f"#x{err.character:04x} is not allowed ({err.reason})",
        )
        return None
    except yaml.YAMLError as err:
        ctx.fail("<yaml>", f"invalid YAML: {err}")
        return None
    except ValueError as err:  # an integer of more digits than Python converts (4300)
        ctx.fail("<yaml>", f"invalid YAML: {str(err).split(';')[0]}")
        return None
    except RecursionError:
        ctx.fail("<yaml>", "invalid YAML: nested too deeply")
        return None
    if data is None:
        ctx.fail("<file>", "the file is empty: expected a job mapping with at least 'collections:'")
    elif not isinstance(data, dict):
        ctx.fail("<file>", f"expected a mapping of settings at the top, found {show(data)}")
    return data


# --- the checker -----------------------------------------------------------------------------

ABSENT: Any = object()  # a key the file does not give
HASH = re.compile(r"[A-Za-z0-9_-]{1,64}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RELATIVE = re.compile(r"-(\d{1,7})d")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIMESTAMP = re.compile(r"\s*\d{4}-\d\d?-\d\d?[Tt ]+\d")  # YAML leaves some of these as text
_SECRET_NAMES = {
    "key",
    "apikey",
    "secret",
    "apisecret",
    "secretkey",
    "password",
    "passwd",
    "token",
    "apitoken",
    "accesstoken",
    "authtoken",
    "credentials",
    "auth",
}
_SECRET_WORDS = re.compile(r"secret|passw|token|apikey|credential")
BOOL_HINT = " (YAML reads yes/no/on/off/true/false as booleans)"
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 2, 40, 40  # bounded even for alias bombs


@dataclass(slots=True)
class Context:
    """Where problems are collected while one file is checked."""

    source: str
    today: date
    problems: list[Problem] = field(default_factory=list)

    def fail(self, path: str, message: str) -> None:
        """Record one problem at the dotted ``path``."""
        self.problems.append(Problem(self.source, path, message))


def kind(value: Any) -> str:
    """A YAML-flavoured type name for messages."""
    if value is None:
        return "null"
    if isinstance(value, datetime):
        return "date-time"
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
        date: "date",
    }
    return names.get(type(value), type(value).__name__)


def show(value: Any, *, echo: bool = True) -> str:
    """``kind value`` (truncated); only the kind when the value may be a secret."""
    if not echo or value is None:
        return kind(value)
    text = _repr.repr(value.isoformat() if isinstance(value, date) else value)
    return f"{kind(value)} {text[:40] + '...' if len(text) > 40 else text}"


def join(path: str, key: object) -> str:
    """``api`` + ``timeout`` → ``api.timeout``; an empty or non-text key shows as its repr."""
    name = key if isinstance(key, str) and key.strip() else repr(key)
    return f"{path}.{name}" if path else name


def mapping(
    ctx: Context, value: Any, path: str, known: tuple[str, ...], *, echo: bool = True
) -> dict[Any, Any] | None:
    """``value`` if it is a mapping whose keys are all known; record every stray key."""
    if not isinstance(value, dict):
        ctx.fail(path, f"expected a mapping, found {show(value, echo=echo)}")
        return None
    for key in value:
        if key not in known:
            unknown_key(ctx, path, key, known)
    return value


def unknown_key(ctx: Context, path: str, key: object, known: tuple[str, ...]) -> None:
    """Refuse a key; never echo its value (it may be a credential someone pasted)."""
    name = key if isinstance(key, str) and key.strip() else repr(key)
    name = name if len(name) <= 64 else name[:40] + "..."
    folded = re.sub(r"[\W_]", "", name.lower())
    close = difflib.get_close_matches(name, known, n=1)
    if folded in _SECRET_NAMES or (not close and _SECRET_WORDS.search(folded)):
        ctx.fail(
            join(path, name),
            "credentials must not be in the job file: put the value in "
            "an environment variable and name it with api.key_env / api.secret_env",
        )
        return
    hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
    ctx.fail(join(path, name), f"unknown key {name!r}{hint}")


def integer(
    ctx: Context,
    raw: Any,
    path: str,
    default: int,
    low: int,
    high: int | None = None,
    *,
    note: str = "",
) -> int:
    """An integer in ``low..high`` (``bool`` is not one), else the default after a problem.

    ``note`` says what ``high`` stands for (``about a century``), in the message.
    """
    if raw is ABSENT:
        return default
    wanted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    wanted += f" ({note})" if note else ""
    if type(raw) is not int:
        hint = BOOL_HINT if isinstance(raw, bool) else ""
        ctx.fail(path, f"expected {wanted}, found {show(raw)}{hint}")
    elif raw < low or (high is not None and raw > high):
        ctx.fail(path, f"expected {wanted}, found {_repr.repr(raw)}")
    else:
        return raw
    return default


def positive(
    ctx: Context, raw: Any, path: str, default: float, high: int | None = None, *, note: str = ""
) -> float:
    """A finite number of seconds > 0 and at most ``high``, else the default after a problem.

    The upper bound keeps clocks and timers in range (``now + seconds`` must stay a time);
    ``note`` says what it stands for (``a day``), in the message.
    """
    if raw is ABSENT:
        return default
    most = "" if high is None else f" and at most {high}" + (f" ({note})" if note else "")
    if type(raw) not in (int, float):
        hint = BOOL_HINT if isinstance(raw, bool) else ""
        ctx.fail(path, f"expected a number of seconds > 0{most}, found {show(raw)}{hint}")
    # The type first: math.isfinite() cannot take an int too large for a float.
    elif (
        (type(raw) is float and not math.isfinite(raw))
        or raw <= 0
        or (high is not None and raw > high)
    ):
        ctx.fail(path, f"expected a finite number of seconds > 0{most}, found {_repr.repr(raw)}")
    else:
        return float(raw)
    return default


def calendar_date(ctx: Context, raw: Any, path: str) -> date | None:
    """An ISO date, ``today``, ``yesterday`` or ``-Nd`` (UTC calendar days), else None."""
    if isinstance(raw, datetime) or (isinstance(raw, str) and _TIMESTAMP.match(raw)):
        ctx.fail(path, f"expected a date without a time of day, found {show(raw)}")
        return None
    if isinstance(raw, date):
        return raw
    wanted = "an ISO date (YYYY-MM-DD), today, yesterday or -Nd (N days ago)"
    if not isinstance(raw, str):
        ctx.fail(path, f"expected {wanted}, found {show(raw)}")
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
    ctx.fail(path, f"expected {wanted}, found {show(raw)}")
    return None
