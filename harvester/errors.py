"""Every error the harvester raises, and the exit-code table.

The tree::

    HarvesterError                      root; carries an exit code
    ├── JobError                        bad job file, arguments or credentials setup (exit 2)
    ├── UsageError                      a command's arguments, or a missing optional extra (exit 2)
    │   └── UnfencedStore               the object store ignores conditional writes (exit 2)
    ├── LockedError                     another run holds the output's lock (exit 4)
    │   ├── LeaseLost                   this run's object-store lease ended or was taken over
    │   └── WriteConflict               another writer changed an object this run would replace
    ├── StorageError                    the object store refused or failed a read or write (74)
    │   ├── UnreadableFiles             part files that are not the dataset's Parquet (named)
    │   └── BrokenDeltaLog              a Delta table's log cannot be read (the entry named)
    ├── StateError                      the state database cannot be read or written (74)
    ├── CredentialsRejected             the API answered 41/44: no call can succeed (exit 3)
    ├── CircuitOpen                     the API failed, or asked us to wait, too long (exit 1)
    ├── DiscoveryFailed                 the account's collections could not be listed (exit 1)
    ├── UnitsFailed                     raise_on_failed_units(): the run did not exit 0 (its code)
    ├── BudgetUnavailable               the shared rate budget cannot be reached (exit 2 before
    │                                   any call, exit 1 mid-run)
    └── UnitError                       one unit (collection × window) could not be fetched
        ├── TransientError              worth another attempt (retry reads ``transient``)
        │   ├── NetworkError            connection refused/reset/dropped, DNS
        │   ├── RequestTimeout          no complete answer within the attempt's deadline
        │   ├── HttpError               HTTP 5xx or 429 (``retry_after`` when the server said)
        │   ├── BadResponse             a body that is not the API's JSON envelope, or a
        │   │                           code-20 envelope on an HTTP status other than 200
        │   ├── ApiBusy                 codes 22 (maintenance) and 38 (processing)
        │   └── RateLimited             codes 31/32: someone spent the key's budget
        └── PermanentError              another attempt would get the same answer
            ├── ApiRejected             codes 30, 40, 42, 43, 46 and unknown codes
            ├── NotFetched              the run (or the unit's account) stopped before it
            └── InvalidPayload          code 20 with a ``data`` that breaks the schema
                └── UnreadableAnswer    an answer past the size cap, nested too deep, with
                                        duplicate keys, or that cannot be decoded

Each class says whether running the same job again can help (``retryable``): an
orchestrator retries a task on CircuitOpen, LockedError, BudgetUnavailable or UnitsFailed,
not on a JobError or rejected credentials.

Messages never contain the API key, the secret or a signature: errors are built from units,
codes and reasons, never from URLs (see :mod:`harvester.redact` for the last line of defence).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harvester.model import Unit

__all__ = [
    "EXIT_CODES",
    "ApiBusy",
    "ApiRejected",
    "BadFile",
    "BadResponse",
    "BrokenDeltaLog",
    "BudgetUnavailable",
    "CircuitOpen",
    "CredentialsRejected",
    "DiscoveryFailed",
    "HarvesterError",
    "HttpError",
    "InvalidPayload",
    "JobError",
    "LeaseLost",
    "LockedError",
    "NetworkError",
    "NotFetched",
    "PermanentError",
    "Problem",
    "RateLimited",
    "RequestTimeout",
    "StateError",
    "StorageError",
    "TransientError",
    "UnfencedStore",
    "UnitError",
    "UnitsFailed",
    "UnreadableAnswer",
    "UnreadableFiles",
    "UsageError",
    "WriteConflict",
]

EXIT_OK = 0
EXIT_UNITS_FAILED = 1
EXIT_BAD_JOB = 2
EXIT_CREDENTIALS = 3
EXIT_LOCKED = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in harvester, never an expected outcome
EXIT_LOCAL_IO = 74  # EX_IOERR: the output or state folder cannot be written (disk, permissions)
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE: what the shell reports for `yes | head`

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "every unit succeeded",
    EXIT_UNITS_FAILED: "the run finished but some units failed (or the API was down too long)",
    EXIT_BAD_JOB: "invalid job file, arguments or missing credentials (nothing requested)",
    EXIT_CREDENTIALS: "the API rejected the credentials (codes 41/44)",
    EXIT_LOCKED: "another run holds the output's lock, or took it over, or wrote an object"
    " this run was about to replace: this run wrote nothing more",
    EXIT_INTERNAL: "a bug in harvester (the message says so; please report it)",
    EXIT_LOCAL_IO: "the output or state cannot be read or written (disk, permissions, store)",
    EXIT_SIGINT: "stopped by SIGINT (Ctrl-C); what was fetched is committed",
    EXIT_SIGTERM: "stopped by SIGTERM; what was fetched is committed",
    EXIT_CLOSED_PIPE: "stdout was closed early (piped into head): the rest was not printed",
}


class HarvesterError(Exception):
    """Root of every error the harvester raises on purpose.

    ``retryable`` tells an orchestrator whether running the same job again, unchanged, can
    help (the API was down, another run held the lock) or not (fix the job or the keys first).
    """

    exit_code: int = EXIT_UNITS_FAILED
    retryable: bool = False


# --- the job and the run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job file: where, which field, what was expected."""

    source: str  # the file (or "arguments", or "environment")
    field: str  # dotted path, e.g. "collections[1].start"
    message: str  # what was expected / what is wrong, never echoing a possible secret

    def __str__(self) -> str:
        return f"{self.source}: {self.field}: {self.message}"


class JobError(HarvesterError):
    """The job file, the arguments or the credentials set-up is invalid; nothing was requested."""

    exit_code = EXIT_BAD_JOB

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(HarvesterError):
    """A reading command cannot do what was asked (no such output, a missing optional extra)."""

    exit_code = EXIT_BAD_JOB


class LockedError(HarvesterError):
    """Another harvester run holds the lock on this output folder."""

    exit_code = EXIT_LOCKED
    retryable = True


class UnfencedStore(UsageError):
    """The object store accepted a write its condition should have refused: it ignores
    ``If-Match``/``If-None-Match``, so nothing can keep a second writer from overwriting."""

    def __init__(self, uri: str, what: str, flag: str) -> None:
        self.uri = uri
        self.what = what  # which condition was ignored
        super().__init__(
            f"{uri}: the object store ignores conditional writes ({what}): a second writer"
            " (another host, or this one after its lease ended) could overwrite partitions"
            f" unseen. Nothing was written. Use a store that honours If-Match and"
            f" If-None-Match, or accept the risk with {flag}"
        )


class LeaseLost(LockedError):
    """This run's lease on an object-store output ended or was taken over: it writes no more."""

    def __init__(self, location: str, reason: str) -> None:
        self.location = location
        self.reason = reason
        super().__init__(
            f"{location}: {reason}; this run stops writing (exit 4); what it fetched and did"
            " not write stays in its state for the next run"
        )


class WriteConflict(LockedError):
    """An object changed since this run read it (or appeared where this run meant to create
    one): another writer got there first, so this run stops writing before it overwrites."""

    def __init__(self, uri: str, expected: str, found: str = "") -> None:
        self.uri = uri
        self.expected = expected  # what this run read: "no object" or a version
        self.found = found  # what the store said, when it said
        said = f" ({found})" if found else ""
        super().__init__(
            f"{uri}: another writer changed this object after this run read it (this run"
            f" expected {expected}; the store refused the write{said}); this run stops"
            " writing (exit 4); what it fetched and did not write stays in its state"
        )


class StorageError(HarvesterError):
    """The output's object store refused a request (credentials, permissions) or failed.

    ``uri`` names the object (or the output) the failed request was for, when known.
    """

    exit_code = EXIT_LOCAL_IO

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class StateError(HarvesterError):
    """The state database is damaged, locked or cannot be written; the message names its path
    and what to do."""

    exit_code = EXIT_LOCAL_IO


@dataclass(frozen=True)
class BadFile:
    """One part file that cannot be read as its dataset's Parquet: where, and why."""

    dataset: str
    period_start: date
    path: str  # as the output's filesystem names it
    reason: str  # the reader's message, first line

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class UnreadableFiles(StorageError):
    """Part files that are truncated or not Parquet at all (``files`` names each)."""

    def __init__(self, files: list[BadFile], hint: str) -> None:
        self.files = list(files)
        names = "; ".join(str(f) for f in self.files[:5])
        more = f" (and {len(self.files) - 5} more)" if len(self.files) > 5 else ""
        super().__init__(f"unreadable part files: {names}{more}; {hint}")


class BrokenDeltaLog(StorageError):
    """A Delta table's transaction log cannot be read: its message names the entry."""


class CircuitOpen(HarvesterError):
    """Every call failed for longer than the configured window (the API looks down), or the
    API asked to wait (Retry-After) longer than that window allows."""

    exit_code = EXIT_UNITS_FAILED
    retryable = True


class DiscoveryFailed(HarvesterError):
    """``discover`` was asked for, but ``collection.getList`` failed even after retries."""

    exit_code = EXIT_UNITS_FAILED
    retryable = True

    def __init__(self, reason: str) -> None:
        super().__init__(f"could not list the account's collections: {reason}")


class UnitsFailed(HarvesterError):
    """A run that did not end with exit 0 (``RunReport.raise_on_failed_units``): units
    failed, or it stopped before finishing its job. ``exit_code`` is the run's; the next run
    fetches exactly what is not done, so a retry helps unless the API rejected the
    credentials (``retryable`` is then False: fix the keys first)."""

    def __init__(
        self,
        message: str,
        *,
        failed: int,
        report: Any = None,
        exit_code: int = EXIT_UNITS_FAILED,
    ) -> None:
        super().__init__(message)
        self.failed = failed
        self.report = report
        self.exit_code = exit_code
        self.retryable = exit_code != EXIT_CREDENTIALS


class BudgetUnavailable(HarvesterError):
    """The shared rate budget (Redis, or the host's budget file) cannot be read or written.

    Pacing alone would overrun a budget other processes spend too, so the run stops: with exit
    2 when no call was made yet (``before_any_call``), else exit 1, committed work kept. A
    retry helps once the budget's store is back.
    """

    retryable = True

    def __init__(self, message: str, *, before_any_call: bool = False) -> None:
        super().__init__(message)
        self.exit_code = EXIT_BAD_JOB if before_any_call else EXIT_UNITS_FAILED


class CredentialsRejected(HarvesterError):
    """The API answered 41 (bad key) or 44 (bad signature): no later call can succeed."""

    exit_code = EXIT_CREDENTIALS

    def __init__(self, code: int, status: str = "") -> None:
        self.code = code
        what = "invalid credentials (bad API key)" if code == 41 else "invalid signature"
        super().__init__(f"the API rejected the credentials: code {code}, {what}")


# --- one unit -------------------------------------------------------------------------------


class UnitError(HarvesterError):
    """A unit could not be fetched; ``transient`` says whether another attempt may succeed."""

    transient: bool = False
    kind: str = "error"  # a short stable name for counters and reports

    def __init__(self, reason: str, *, code: int | None = None) -> None:
        self.reason = reason
        self.code = code
        self.unit: Unit | None = None
        self.attempts = 0
        super().__init__(reason)


class TransientError(UnitError):
    """Worth another attempt after a backoff."""

    transient = True
    retryable = True
    kind = "transient"


class NetworkError(TransientError):
    """The connection failed: refused, reset, dropped mid-answer, name not resolved."""

    kind = "network"


class RequestTimeout(TransientError):
    """No complete answer (connect, headers and the whole body) within the attempt's deadline."""

    kind = "timeout"


class HttpError(TransientError):
    """HTTP 5xx or 429; ``retry_after`` is the server's Retry-After in seconds, when given."""

    kind = "http"

    def __init__(self, reason: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class BadResponse(TransientError):
    """A body that is not the API's JSON envelope (truncated, HTML, not an object), or a
    code-20 envelope on an HTTP status other than 200 (only a 200 answer is data)."""

    kind = "bad_response"


class ApiBusy(TransientError):
    """Code 22 (maintenance) or 38 (collection in processing): retry later."""

    kind = "busy"


class RateLimited(TransientError):
    """Code 31 (per-second) or 32 (per-minute) limit exceeded: pause the key, then retry."""

    kind = "rate_limited"


class PermanentError(UnitError):
    """Another attempt would get the same answer: the unit fails, the run goes on."""

    kind = "permanent"


class ApiRejected(PermanentError):
    """Codes 30, 40, 42, 43, 46 (and codes the API does not document)."""

    kind = "rejected"


class NotFetched(PermanentError):
    """A unit the run did not fetch because the run, or the unit's account, stopped first
    (credentials rejected, budget unavailable, the API down too long): failed with that
    reason, so that the report and the state say the job is not done."""

    kind = "stopped"


class InvalidPayload(PermanentError):
    """Code 20, but ``data`` breaks the schema; ``payload`` is kept for the quarantine."""

    kind = "invalid_payload"

    def __init__(self, reason: str, *, payload: Any = None) -> None:
        super().__init__(reason)
        self.payload = payload


class UnreadableAnswer(InvalidPayload):
    """An answer the harvester will not read: larger than ``api.max_answer_mib`` (counted
    after decompression), nested deeper than any API answer, with duplicate keys, or that
    the JSON decoder refused for any other reason than being cut short. ``payload`` holds its
    first bytes, for the quarantine."""

    kind = "unreadable_answer"
