"""The job's ``catalog:`` block (``format: iceberg``): which pyiceberg catalog holds the tables.

::

    catalog:
      type: sql                      # sql (default), rest, glue, hive, dynamodb, bigquery
      uri: sqlite:////var/lib/harvester/catalog.db   # or postgresql+psycopg2://…, https://…
      namespace: flipsnack           # default harvester
      properties: {s3.region: eu-central-1}          # given to pyiceberg as they are
      secrets: {token: ICEBERG_TOKEN}                # property ← environment variable

A local output needs none (its own SQLite file in ``OUTPUT/_harvester/``); an object-store
output must name one, since the state's cache folder is per machine. Secrets never live in the
job file: a URI with a password, or a property whose name says it is a credential, is refused
(its value never echoed) and belongs under ``secrets``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from harvester.job.fields import ENV_NAME, Context, mapping, show
from harvester.job.location import Location
from harvester.job.model import (
    CATALOG_TYPES,
    DEFAULT_CATALOG_NAME,
    DEFAULT_NAMESPACE,
    CatalogSettings,
)

__all__ = ["parse_catalog"]

_KEYS = ("type", "uri", "name", "namespace", "warehouse", "properties", "secrets")
_IDENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# A property whose name says it holds a credential: it belongs under ``secrets``.
_SECRET_PROPERTY = re.compile(r"secret|passw|token|credential|access-key|session|sas|signer\.")


def parse_catalog(ctx: Context, raw: Any, fmt: str, output: Location) -> CatalogSettings | None:
    """``catalog:``; only with ``format: iceberg``, required for an object-store output."""
    if fmt == "iceberg" and output.scheme not in ("file", "s3"):
        ctx.fail("format", "iceberg writes to a local folder or to s3:// (where it is tested)")
    if raw is None:
        if fmt == "iceberg" and output.scheme == "s3":
            ctx.fail(
                "catalog",
                f"format: iceberg on {output.scheme}:// needs a catalog named here (the"
                " state's cache folder is per machine): catalog: {uri: sqlite:////path/catalog.db}"
                " or {type: rest, uri: https://…}",
            )
        return None
    if fmt != "iceberg":
        ctx.fail("catalog", f"only with format: iceberg (this job's format is {fmt})")
        return None
    block = mapping(ctx, raw, "catalog", _KEYS, echo=False)
    if block is None:
        return None
    kind = _text(ctx, block, "type") or "sql"
    if kind not in CATALOG_TYPES:
        ctx.fail("catalog.type", f"expected one of {', '.join(CATALOG_TYPES)}, found {kind!r}")
    secrets = _secrets(ctx, block.get("secrets"))
    uri = _uri(ctx, block.get("uri"))
    needs_uri = kind == "rest" or (kind == "sql" and not output.is_local)
    if uri is None and "uri" not in secrets and needs_uri:
        ctx.fail("catalog.uri", f"a {kind} catalog needs its uri (or secrets: {{uri: VAR}})")
    return CatalogSettings(
        type=kind,
        uri=uri,
        name=_ident(ctx, block, "name") or DEFAULT_CATALOG_NAME,
        namespace=_ident(ctx, block, "namespace") or DEFAULT_NAMESPACE,
        warehouse=_text(ctx, block, "warehouse"),
        properties=_properties(ctx, block.get("properties")),
        secrets=tuple(sorted(secrets.items())),
    )


def _text(ctx: Context, block: dict[Any, Any], key: str) -> str | None:
    """An optional non-empty text."""
    value = block.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        ctx.fail(f"catalog.{key}", f"expected a non-empty text, found {show(value)}")
        return None
    return value.strip()


def _ident(ctx: Context, block: dict[Any, Any], key: str) -> str | None:
    """A catalog or namespace name: letters, digits, ``_ . -``."""
    value = _text(ctx, block, key)
    if value is not None and not _IDENT.fullmatch(value):
        ctx.fail(f"catalog.{key}", f"expected letters, digits, '_', '.' or '-', found {value!r}")
        return None
    return value


def _uri(ctx: Context, value: Any) -> str | None:
    """The catalog's URI; one with a password in it is refused, never echoed."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        ctx.fail("catalog.uri", f"expected a URI, found {show(value, echo=False)}")
        return None
    try:
        password = urlsplit(value).password
    except ValueError:
        password = None
    if password:
        ctx.fail(
            "catalog.uri",
            "holds a password: put the whole URI in an environment variable and name it"
            " with secrets: {uri: VARIABLE}",
        )
        return None
    return value.strip()


def _properties(ctx: Context, raw: Any) -> tuple[tuple[str, str], ...]:
    """``properties``: pyiceberg's own settings (text, numbers, booleans), no credential."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        ctx.fail("catalog.properties", f"expected a mapping, found {show(raw, echo=False)}")
        return ()
    found: list[tuple[str, str]] = []
    for key, value in raw.items():
        path = f"catalog.properties.{key}"
        if not isinstance(key, str) or not key.strip():
            ctx.fail("catalog.properties", f"expected text keys, found {show(key, echo=False)}")
        elif _SECRET_PROPERTY.search(key.lower()):
            ctx.fail(path, "a credential: name the variable that holds it under catalog.secrets")
        elif key in ("uri", "type", "warehouse"):
            ctx.fail(path, f"give it as catalog.{key}")
        elif isinstance(value, bool):
            found.append((key, "true" if value else "false"))
        elif isinstance(value, str | int | float):
            found.append((key, str(value)))
        else:
            ctx.fail(path, f"expected a text, number or boolean, found {show(value, echo=False)}")
    return tuple(sorted(found))


def _secrets(ctx: Context, raw: Any) -> dict[str, str]:
    """``secrets``: property name → the environment variable that holds its value."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        ctx.fail("catalog.secrets", f"expected a mapping, found {show(raw, echo=False)}")
        return {}
    found: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key.strip():
            ctx.fail("catalog.secrets", f"expected text keys, found {show(key, echo=False)}")
        elif not isinstance(value, str) or not ENV_NAME.fullmatch(value):
            msg = "expected the name of an environment variable (not its value)"
            ctx.fail(f"catalog.secrets.{key}", msg)
        else:
            found[key] = value
    return found
