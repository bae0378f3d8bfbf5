"""A Delta table's log, when it cannot be read: which entry, and what to do about it.

delta-rs reports a log entry that is not JSON without naming it; :func:`broken_log_entry` reads
the entries (newest first, on the error path only) and names the first that does not parse,
with what restores the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs

from harvester.job.location import Location

__all__ = ["LOG_DIR", "broken_log_entry"]

LOG_DIR = "_delta_log"


def broken_log_entry(fs: pafs.FileSystem, location: Location, name: str) -> str | None:
    """What to say about the first log entry (from the newest) that is not JSON."""
    folder = location.join(name, LOG_DIR)
    selector = pafs.FileSelector(folder, allow_not_found=True)
    entries = sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.path.endswith(".json") and info.base_name[:-5].isdigit()
    )
    for path in reversed(entries):
        with fs.open_input_stream(path) as fh:
            text = fh.read().decode("utf-8", errors="replace")
        try:
            for line in text.splitlines():
                if line.strip():
                    json.loads(line)
        except ValueError as exc:
            version = int(Path(path).name[:-5])
            newest = path == entries[-1]
            if not newest:
                undo = " it is not the newest entry, so it must be restored"
            elif version == 0:
                undo = (
                    f" it is the table's only entry: deleting the folder {name} starts the"
                    " table afresh, and the next run fetches again what it held"
                )
            else:
                undo = (
                    f" it is the newest entry: deleting it rolls {name} back to version"
                    f" {version - 1}, and the next run fetches again what that commit held"
                )
            where = path if location.is_local else f"{location.scheme}://{path}"
            return (
                f"{where}: the Delta log entry of version {version} is unreadable ({exc});"
                " restore it from a backup or the bucket's object versions;"
                f"{undo}. Nothing was written"
            )
    return None
