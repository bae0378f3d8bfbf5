"""Every name the harvester gives to something on disk or in a bucket, in one place.

An output holds the two datasets and the harvester's own folder::

    OUTPUT/page_stats/period_start=YYYY-MM-DD/part-0.parquet
    OUTPUT/collection_stats/period_start=YYYY-MM-DD/part-0.parquet
    OUTPUT/_harvester/output.json        what the output holds (id, granularity, format)
    OUTPUT/_harvester/discovered.json    the collections each account listed last
    OUTPUT/_harvester/lock.json          the object-store lock (object storage only)
    OUTPUT/_harvester/probe/TOKEN        a scratch object: does the store honour conditions?
    OUTPUT/_harvester/iceberg.json       format: iceberg: the catalog that holds the tables
    OUTPUT/_harvester/catalog.sqlite     format: iceberg: a local output's own SQLite catalog
    OUTPUT/_harvester/runs/run-ID.json   every run's report
    OUTPUT/_harvester/quarantine/DATASET/period_start=YYYY-MM-DD/part-0.parquet.STAMP
                                         unreadable part files, moved aside by a run

and, for a local output, the state beside the data::

    OUTPUT/_state/state.sqlite           what is staged, done, failed, gone
    OUTPUT/_state/harvester.lock         the local lock (``flock``)
    OUTPUT/_state/last-run.json          the last run's report
    OUTPUT/_state/reports/run-ID.json    every run's report
    OUTPUT/_state/quarantine/run-ID.jsonl  answers that failed validation (redacted)

An object store's state lives in the user's cache (``$XDG_CACHE_HOME/harvester/<hash>/``).

A key's rate budget on one host, shared by every process of the user (see
:mod:`harvester.pacing.protocol`)::

    HOME/.cache/harvester/budget/<digest>.sqlite   the calls held and ended, the pause
    HOME/.cache/harvester/budget/<digest>.known    that this budget has existed here

``HOME`` is the user's home from the password database, not ``$HOME``; ``HARVESTER_BUDGET_DIR``
replaces the whole folder.
"""

from __future__ import annotations

__all__ = [
    "ALL_ACCOUNTS",
    "BUDGET_DIR_PARTS",
    "BUDGET_FILE_SUFFIX",
    "BUDGET_KNOWN_SUFFIX",
    "CATALOG_FILE",
    "DEFAULT_ACCOUNT",
    "DISCOVERED_FILE",
    "ICEBERG_FILE",
    "LAKE_QUARANTINE_DIR",
    "LAST_RUN_FILE",
    "LOCK_FILE",
    "LOCK_KEY",
    "META_DIR",
    "META_FILE",
    "PROBE_DIR",
    "QUARANTINE_DIR",
    "REPORTS_DIR",
    "REPORT_FOLDERS",
    "RESERVED_ACCOUNT_NAMES",
    "RUNS_DIR",
    "STATE_DIR",
    "STATE_FILE",
]

DEFAULT_ACCOUNT = "default"  # the one account of a job without ``accounts``
# The run-wide series of a job with several accounts carry account="all" (metrics, push
# groups): no account may be called that, in any case.
ALL_ACCOUNTS = "all"
RESERVED_ACCOUNT_NAMES = frozenset({ALL_ACCOUNTS})

# The harvester's own folder inside an output (local or object storage).
META_DIR = "_harvester"
META_FILE = "output.json"
DISCOVERED_FILE = "discovered.json"
LOCK_KEY = f"{META_DIR}/lock.json"
RUNS_DIR = f"{META_DIR}/runs"
PROBE_DIR = f"{META_DIR}/probe"  # written and deleted by each run's first lock acquire
ICEBERG_FILE = "iceberg.json"  # which catalog holds an Iceberg output's tables (no secret)
CATALOG_FILE = "catalog.sqlite"  # the SqlCatalog of a local Iceberg output
# Unreadable part files (truncated, not Parquet) a run moved aside before fetching them again:
# the same path below it as in the output, with the time it was moved as a suffix (so neither
# a ``*.parquet`` glob nor the datasets' readers ever take one for data).
LAKE_QUARANTINE_DIR = f"{META_DIR}/quarantine"

# The state's folder: inside a local output, or in the cache for an object store.
STATE_DIR = "_state"
STATE_FILE = "state.sqlite"
LOCK_FILE = "harvester.lock"
LAST_RUN_FILE = "last-run.json"
REPORTS_DIR = "reports"
QUARANTINE_DIR = "quarantine"

# Where ``harvester runs OUTPUT`` looks for reports, relative to the output.
REPORT_FOLDERS = (RUNS_DIR, f"{STATE_DIR}/{REPORTS_DIR}")

# A host's rate budgets: under the user's home, one file per budget and a mark that it existed.
BUDGET_DIR_PARTS = (".cache", "harvester", "budget")
BUDGET_FILE_SUFFIX = ".sqlite"
BUDGET_KNOWN_SUFFIX = ".known"
