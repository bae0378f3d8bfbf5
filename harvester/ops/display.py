"""Tables on stdout, for people and for files alike.

On a terminal rich styles them; written to a file or a pipe (cron mail, a wiki paste) they are
plain text: no control codes, never squeezed to 80 columns, no padding at line ends.

A table never cuts a number. :func:`fitted_table` gives every column a width of its own: a
number column is never narrower than its widest figure (its header may wrap), a text column
wraps at its spaces; when even that is too wide for the console, the gaps between columns
narrow, then text columns are left out in the order the caller names, and when nothing is
left to drop, the table is printed wider than the console rather than cut.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["Column", "fitted_table", "print_table", "stdout_console"]

WIDE = 160  # columns for a table written to a file or a pipe (COLUMNS, when set, wins)
_MEASURE_WIDTH = 100_000

Cell = str | Text


class _StdoutConsole(Console):
    """A console whose closed pipe is an error the CLI ends quietly on (rich would exit 1)."""

    def on_broken_pipe(self) -> None:
        """Print nothing more; let the CLI end with its closed-pipe exit code."""
        self.quiet = True
        raise BrokenPipeError


def stdout_console() -> Console:
    """A console on stdout: styled on a terminal; plain text, no control codes, elsewhere."""
    console = _StdoutConsole(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = WIDE
    return console


@dataclass(frozen=True)
class Column:
    """One column of a table: its header, its cells (top to bottom) and an optional footer."""

    header: str
    cells: Sequence[Cell]
    numeric: bool = False  # right-aligned, never narrower than its widest figure
    footer: Cell | None = None

    def _texts(self) -> list[str]:
        body = [c.plain if isinstance(c, Text) else c for c in self.cells]
        if self.footer is not None:
            body.append(self.footer.plain if isinstance(self.footer, Text) else self.footer)
        return body

    @property
    def natural(self) -> int:
        """The width that wraps nothing."""
        return max(len(t) for t in [self.header, *self._texts()])

    @property
    def minimum(self) -> int:
        """The width below which something would be cut: a figure, or a word."""
        header = max((len(w) for w in self.header.split()), default=1)
        if self.numeric:
            return max([header, *(len(t) for t in self._texts())])
        return max([header, *(len(w) for t in self._texts() for w in t.split())])


Make = Callable[[bool], Table]  # an empty table, styled; True: with narrow gaps


def fitted_table(
    console: Console, make: Make, columns: Sequence[Column], *, drop: Sequence[str] = ()
) -> Table:
    """``make``'s table filled with ``columns``, fitted to the console's width.

    While the columns cannot fit even wrapped, the table tries narrow gaps, then leaves out
    the columns named in ``drop`` (by header, in that order) one at a time; the columns shown
    get their natural width if the console has room, else their minimum and what room there
    is, text columns served first.
    """
    shown, tight = list(columns), False
    for header in [*drop, None]:
        for tight in (False, True):
            if _width(console, make, tight, shown, [c.minimum for c in shown]) <= console.width:
                break
        else:
            if header is not None:
                shown = [c for c in shown if c.header != header]
            continue
        break
    widths = [c.minimum for c in shown]
    room = console.width - _width(console, make, tight, shown, widths)
    for i in sorted(range(len(shown)), key=lambda i: shown[i].numeric):
        grow = max(0, min(room, shown[i].natural - widths[i]))
        widths[i] += grow
        room -= grow
    return _build(make(tight), shown, widths)


def _build(table: Table, columns: Sequence[Column], widths: Sequence[int]) -> Table:
    for column, width in zip(columns, widths, strict=True):
        table.add_column(
            column.header,
            footer=column.footer or "",
            justify="right" if column.numeric else "left",
            width=width,
            overflow="fold",
        )
    for row in zip(*(c.cells for c in columns), strict=True):
        table.add_row(*row)
    return table


def _width(
    console: Console, make: Make, tight: bool, columns: Sequence[Column], widths: Sequence[int]
) -> int:
    """How wide the table is with these columns at these widths, borders and padding in."""
    empty = [Column(c.header, [], c.numeric) for c in columns]
    return _measure(console, _build(make(tight), empty, widths))


def _measure(console: Console, table: Table) -> int:
    return Measurement.get(console, console.options.update_width(_MEASURE_WIDTH), table).maximum


def print_table(console: Console, table: Table, *, blank_after: bool = True) -> None:
    """Print a table (and a blank line) without the spaces rich pads lines with; wider than
    the console when it must be, never cut."""
    width = console.width
    needed = _measure(console, table)
    with console.capture() as captured:
        if needed > width:
            console.width = needed
        try:
            console.print(table)
        finally:
            console.width = width
    lines = captured.get().splitlines() + ([""] if blank_after else [])
    for line in lines:  # a line at a time: one large write may lose its end to a closed pipe
        console.file.write(line.rstrip(" ") + "\n")  # silently, where small ones fail loudly
