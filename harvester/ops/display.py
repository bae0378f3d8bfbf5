"""Tables on stdout, for people and for files alike.

On a terminal rich styles them; written to a file or a pipe (cron mail, a wiki paste) they are
plain text: no control codes, never squeezed to 80 columns, no padding at line ends.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

__all__ = ["print_table", "stdout_console"]

WIDE = 160  # columns for a table written to a file or a pipe (COLUMNS, when set, wins)


def stdout_console() -> Console:
    """A console on stdout: styled on a terminal; plain text, no control codes, elsewhere."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = WIDE
    return console


def print_table(console: Console, table: Table, *, blank_after: bool = True) -> None:
    """Print a table (and a blank line) without the spaces rich pads lines with."""
    with console.capture() as captured:
        console.print(table)
    lines = captured.get().splitlines() + ([""] if blank_after else [])
    console.file.write("".join(line.rstrip(" ") + "\n" for line in lines))
