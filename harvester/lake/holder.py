"""Who holds a lock, and whether that holder is certainly dead as seen from here.

A hostname alone cannot tell: containers with ``--network host``, Kubernetes ``hostNetwork`` or
a fixed ``hostname:`` share one, and a process of another PID namespace is invisible here, so
it would look dead while it runs. A holder is judged dead only when it is on this machine
(same boot id), in this PID namespace (same ``/proc/self/ns/pid`` inode), and its pid is gone
or now names a process started at another time (``/proc/PID/stat``, field 22: a pid reused).
Anything not known (another OS, an unreadable ``/proc``, an older lock without these fields)
counts as alive: its lease decides.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Holder"]

PROC = Path("/proc")
BOOT_ID = PROC / "sys/kernel/random/boot_id"


@dataclass(frozen=True)
class Holder:
    """A process, named well enough to tell later, from this host, whether it has died."""

    host: str
    pid: int
    boot_id: str | None = None  # the kernel's id for this boot of this machine
    pid_ns: int | None = None  # the inode of the PID namespace the pid is counted in
    started: int | None = None  # the process's start, in clock ticks since boot

    @classmethod
    def here(cls) -> Holder:
        """This process."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _boot_id(), _pid_ns(), _start_of(pid))

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Holder:
        """The holder a lock body names (fields it lacks are unknown)."""

        def known(name: str, kind: type) -> Any:
            value = body.get(name)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        return cls(
            str(body.get("host", "")),
            known("pid", int) or 0,
            known("boot_id", str),
            known("pid_ns", int),
            known("started", int),
        )

    def fields(self) -> dict[str, Any]:
        """The holder as a lock body's fields."""
        return asdict(self)

    def is_dead(self) -> bool:
        """Whether this holder has certainly ended, as far as this process can see."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False
        if self.boot_id is None or self.boot_id != _boot_id():
            return False  # another machine with our hostname, or nothing known
        if self.pid_ns is None or self.pid_ns != _pid_ns():
            return False  # its pid means nothing in our namespace
        try:
            started = _read_start(self.pid)
        except FileNotFoundError:
            return True  # no such process in this namespace
        except (OSError, ValueError, IndexError):
            return False
        return self.started is not None and started != self.started


def _boot_id() -> str | None:
    try:
        return BOOT_ID.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def _pid_ns() -> int | None:
    try:
        return os.stat(PROC / "self/ns/pid").st_ino
    except OSError:
        return None


def _start_of(pid: int) -> int | None:
    try:
        return _read_start(pid)
    except (OSError, ValueError, IndexError):
        return None


def _read_start(pid: int) -> int:
    """Field 22 of ``/proc/PID/stat`` (after the command name, which may hold spaces)."""
    text = (PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    return int(text.rpartition(")")[2].split()[19])
