"""One writer per output: an ``fcntl.flock`` on ``OUTPUT/_state/harvester.lock``.

The kernel releases a flock when its process dies, so a killed run never blocks the next.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from harvester.errors import LockedError
from harvester.layout import LOCK_FILE, STATE_DIR

__all__ = ["LOCK_FILE", "OutputLock"]


class OutputLock:
    """One writer per output folder: an fcntl.flock on output/_state/harvester.lock.

    The kernel releases a flock when its process dies, so a killed run never blocks the next.
    The file itself is never deleted (deleting a lock file lets two runs lock two files).
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output / STATE_DIR / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False) -> None:
        """Take the lock; raise LockedError if another run holds it, unless ``wait``."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this lock object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(
                f"{self.output} is being written by another harvester run ({holder});"
                " this run exits 4; wait for it to finish, or use --wait to wait"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _write_holder(fd)

    def release(self) -> None:
        """Let the next run in; does nothing if the lock is not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no stale pid for a reader who finds the file unlocked
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _write_holder(fd: int) -> None:
    """Record who holds the lock, for the message another run shows."""
    text = json.dumps(
        {"pid": os.getpid(), "started": datetime.now(UTC).isoformat(timespec="seconds")}
    )
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _read_holder(fd: int) -> str:
    """'pid N, started T' from the lock file, or a placeholder if not yet written."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"pid {holder['pid']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "pid unknown, started at an unknown time"
