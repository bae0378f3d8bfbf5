"""The API key and secret of an account: read from the variables the job names, never from it.

A credential comes from ``env[NAME]``, or from the file ``env[NAME_FILE]`` names (a container
secret), at most 64 KiB; every problem names the variable, never the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harvester.errors import JobError, Problem
from harvester.job.model import ApiSettings

__all__ = ["MAX_CREDENTIAL_FILE_BYTES", "Credentials", "load_credentials"]

MAX_CREDENTIAL_FILE_BYTES = 64 * 1024  # a key or secret file (FLIPSNACK_API_KEY_FILE)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The API key and secret; ``repr`` never shows them."""

    key: str
    secret: str

    def __repr__(self) -> str:
        return "Credentials(key='***', secret='***')"

    __str__ = __repr__


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
        with open(path, "rb") as fh:  # at most one byte past the cap: /dev/zero never ends
            data = fh.read(MAX_CREDENTIAL_FILE_BYTES + 1)
        if len(data) > MAX_CREDENTIAL_FILE_BYTES:
            msg = (
                f"{name} is unset and the file {path!r} named by {file_var} is larger than "
                f"{MAX_CREDENTIAL_FILE_BYTES // 1024} KiB: expected a file holding only the {what}"
            )
            problems.append(Problem("environment", file_var, msg))
            return ""
        value = data.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        msg = f"{name} is unset and the file {path!r} named by {file_var} is unreadable: {reason}"
        problems.append(Problem("environment", file_var, msg))
        return ""
    if not value:
        msg = f"{name} is unset and the file {path!r} named by {file_var} is empty"
        problems.append(Problem("environment", file_var, msg))
    return value
