"""The Iceberg catalog of an output (``format: iceberg``): which one, how to reach it, its record.

A catalog is where a table's current metadata file is named; a commit is the catalog's atomic
swap of that name. A local output has its own SQLite catalog, ``OUTPUT/_harvester/catalog.sqlite``
(in the output, not beside a state that may be elsewhere or lost); any other is the job's
``catalog:`` block, given to pyiceberg's ``load_catalog``. The output records which catalog
holds its tables in ``OUTPUT/_harvester/iceberg.json`` (type, URI, namespace, properties, and the
*names* of the variables holding secrets), so ``summary``, ``verify``, ``maintain`` and
``read_dataset`` find the tables from the output alone.

The table files go where the run's other writes go: for ``s3://`` the job's ``storage:`` block
or ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` and the region, credentials from the standard
AWS variables (pyarrow reads them), never a guessed region looked up on AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harvester.errors import JobError, Problem, StorageError, UsageError
from harvester.job.location import Location, storage_env
from harvester.job.model import CatalogSettings
from harvester.lake.objects import NEW, Objects, Version
from harvester.layout import CATALOG_FILE, ICEBERG_FILE, META_DIR
from harvester.redact import redact, register_secrets

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

__all__ = [
    "catalog_errors",
    "catalog_properties",
    "describe",
    "open_catalog",
    "read_record",
    "table_uri",
    "write_record",
]

PYARROW_IO = "pyiceberg.io.pyarrow.PyArrowFileIO"
_SECRET_VAR = re.compile(r"TOKEN|CREDENTIAL|SECRET|PASSWORD|URI|KEY")
FALLBACK_REGION = "us-east-1"  # an S3-compatible store that names none: never ask AWS which


def table_uri(location: Location, name: str) -> str:
    """Where a dataset's table lives: ``file:///abs/OUTPUT/name`` or ``s3://bucket/prefix/name``."""
    if location.is_local:
        return f"file://{Path(location.join(name)).absolute()}"
    return f"{location.scheme}://{location.join(name)}"


def describe(settings: CatalogSettings, location: Location) -> str:
    """The catalog as messages name it (its URI, or the output's own file; never a secret)."""
    if settings.is_default:
        return f"the SQLite catalog {location.join(META_DIR, CATALOG_FILE)}"
    secrets = dict(settings.secrets)
    where = settings.uri or (f"${secrets['uri']}" if "uri" in secrets else settings.name)
    return f"the {settings.type} catalog {where}"


def catalog_properties(
    settings: CatalogSettings, location: Location, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What ``load_catalog`` gets: the file IO for the output's store, then the job's settings.

    Secrets are read from the variables the job names and registered for redaction.
    """
    env = os.environ if env is None else env
    props: dict[str, str] = {"type": settings.type, "py-io-impl": PYARROW_IO}
    if location.scheme == "s3":
        found = storage_env(location, env)
        if "endpoint" in found:
            props["s3.endpoint"] = found["endpoint"]
        region = found.get("region") or (FALLBACK_REGION if "endpoint" in found else None)
        if region is not None:
            props["s3.region"] = region
    if settings.is_default:
        props["uri"] = f"sqlite:///{Path(location.join(META_DIR, CATALOG_FILE)).absolute()}"
    elif settings.uri is not None:
        props["uri"] = settings.uri
    if settings.warehouse is not None:
        props["warehouse"] = settings.warehouse
    elif settings.type == "sql":
        props["warehouse"] = table_uri(location, "").rstrip("/")
    props.update(settings.properties)
    problems: list[Problem] = []
    for prop, var in settings.secrets:
        value = env.get(var, "").strip()
        if not value:
            problems.append(Problem("environment", var, f"not set or empty: the catalog's {prop}"))
            continue
        register_secrets([value])
        props[prop] = value
    if problems:
        raise JobError(problems)
    # pyiceberg also reads its own variables for this catalog's name: their secrets stay unsaid.
    prefix = f"PYICEBERG_CATALOG__{settings.name.upper().replace('-', '_')}__"
    register_secrets(
        [v for k, v in env.items() if k.startswith(prefix) and _SECRET_VAR.search(k) and v]
    )
    return props


def open_catalog(settings: CatalogSettings, location: Location, *, create: bool) -> Catalog | None:
    """The catalog; None when it is a SQLite file that does not exist and ``create`` is off.

    A missing SQLite file is never made by a reader (it would hold no table and look empty).
    """
    props = catalog_properties(settings, location)
    sqlite = _sqlite_file(props.get("uri", "")) if settings.type == "sql" else None
    if sqlite is not None and not sqlite.is_file():
        if not create:
            return None
        sqlite.parent.mkdir(parents=True, exist_ok=True)
    try:
        from pyiceberg.catalog import load_catalog
    except ImportError:
        raise UsageError(
            "format: iceberg needs the iceberg extra (pip install 'harvester[iceberg]')"
        ) from None
    with catalog_errors(settings, location):
        try:
            return load_catalog(settings.name, **props)
        except (ValueError, KeyError) as exc:  # a bad type or property, as pyiceberg says
            problem = Problem("catalog", "catalog", f"pyiceberg refused it: {redact(str(exc))}")
            raise JobError([problem]) from None


def _sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///path`` URI (None for another database or for memory)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


@contextlib.contextmanager
def catalog_errors(settings: CatalogSettings, location: Location) -> Iterator[None]:
    """A catalog that cannot be reached, or refuses us, is the store's failure (exit 74)."""
    from pyiceberg.exceptions import NoSuchNamespaceError, RESTError
    from requests import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (OSError, RESTError, RequestException, SQLAlchemyError, NoSuchNamespaceError) as exc:
        raise StorageError(
            f"{location}: {describe(settings, location)} refused or failed a request:"
            f" {type(exc).__name__}: {redact(str(exc))[:500]}"
        ) from None


def read_record(location: Location, objects: Objects) -> tuple[CatalogSettings | None, Version]:
    """The catalog the output records (None when it records none), and the record's version."""
    path = location.join(META_DIR, ICEBERG_FILE)
    found = objects.get(path)
    if found is None:
        return None, NEW
    try:
        catalog: Any = json.loads(found[0].decode("utf-8"))["catalog"]
        settings = CatalogSettings(
            type=str(catalog["type"]),
            uri=None if catalog["uri"] is None else str(catalog["uri"]),
            name=str(catalog["name"]),
            namespace=str(catalog["namespace"]),
            warehouse=None if catalog["warehouse"] is None else str(catalog["warehouse"]),
            properties=tuple((str(k), str(v)) for k, v in catalog["properties"]),
            secrets=tuple((str(k), str(v)) for k, v in catalog["secrets"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"unreadable catalog record (missing or bad {exc})"
        raise JobError([Problem(objects.uri(path), "<file>", msg)]) from None
    return settings, found[1]


def write_record(
    location: Location, objects: Objects, settings: CatalogSettings, *, expect: Version
) -> None:
    """Record which catalog holds the tables, over the version read (no secret in it)."""
    text = json.dumps({"catalog": asdict(settings)}, indent=2) + "\n"
    objects.put(location.join(META_DIR, ICEBERG_FILE), text.encode("utf-8"), expect=expect)
