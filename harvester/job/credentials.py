"""The API key and secret of an account: read from the variables the job names, never from it.

A credential comes from ``env[NAME]``, or from the file ``env[NAME_FILE]`` names (a container
secret, or a pipe: ``FLIPSNACK_API_KEY_FILE=<(pass show flipsnack/key)``), at most 64 KiB; a
pipe or FIFO must deliver it within :data:`KEY_FILE_TIMEOUT_SECONDS` (one nobody writes to
would hang the run forever); every problem names the variable, never the value.
"""

from __future__ import annotations

import os
import select
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass

from harvester.errors import JobError, Problem
from harvester.job.model import ApiSettings

__all__ = [
    "KEY_FILE_TIMEOUT_SECONDS",
    "MAX_CREDENTIAL_FILE_BYTES",
    "Credentials",
    "load_credentials",
]

MAX_CREDENTIAL_FILE_BYTES = 64 * 1024  # a key or secret file (FLIPSNACK_API_KEY_FILE)
KEY_FILE_TIMEOUT_SECONDS = 5.0  # for a pipe or FIFO to deliver its whole credential


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
        data = _read_credential_file(path)  # at most one byte past the cap: /dev/zero never ends
        if len(data) > MAX_CREDENTIAL_FILE_BYTES:
            msg = (
                f"{name} is unset and the file {path!r} named by {file_var} is larger than "
                f"{MAX_CREDENTIAL_FILE_BYTES // 1024} KiB: expected a file holding only the {what}"
            )
            problems.append(Problem("environment", file_var, msg))
            return ""
        value = data.decode("utf-8").strip()
    except TimeoutError:
        msg = (
            f"{name} is unset and the file {path!r} named by {file_var} is a pipe that gave no"
            f" {what} within {KEY_FILE_TIMEOUT_SECONDS:g} s: name a file holding only the"
            f" {what}, or start its writer first"
        )
        problems.append(Problem("environment", file_var, msg))
        return ""
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        msg = f"{name} is unset and the file {path!r} named by {file_var} is unreadable: {reason}"
        problems.append(Problem("environment", file_var, msg))
        return ""
    if not value:
        msg = f"{name} is unset and the file {path!r} named by {file_var} is empty"
        problems.append(Problem("environment", file_var, msg))
    return value


def _read_credential_file(path: str) -> bytes:
    """At most the cap plus one byte of ``path``; a pipe or FIFO within the timeout.

    Opened without blocking, so that a FIFO nobody writes to cannot hold the open itself;
    TimeoutError when a pipe's writer does not deliver and close in time.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "a folder, not a file")
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return _read_pipe(fd, time.monotonic() + KEY_FILE_TIMEOUT_SECONDS)
        os.set_blocking(fd, True)  # a file or a device: reads never wait on a writer
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CREDENTIAL_FILE_BYTES:
            chunk = os.read(fd, MAX_CREDENTIAL_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_pipe(fd: int, deadline: float) -> bytes:
    """A pipe's bytes up to its end (its writer closed it), the cap or the deadline."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_CREDENTIAL_FILE_BYTES:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):  # no writer yet, or a silent one
            if chunks:  # a writer that keeps its end open once it has written
                break
            raise TimeoutError
        try:
            chunk = os.read(fd, MAX_CREDENTIAL_FILE_BYTES + 1 - size)
        except BlockingIOError:
            continue
        if not chunk:  # every writer closed it
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
