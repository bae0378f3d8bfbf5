"""The summary's chart: views per period of the most viewed collections, as a PNG.

Drawn with matplotlib's Agg canvas (no display, no pyplot state) for a wiki page or a mail:
a title, labelled axes, a legend and date ticks. A missing period breaks its collection's line,
so a gap in the data is a gap in the chart. ``matplotlib`` is the ``[plot]`` extra: imported
only here, only when a chart is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from harvester.errors import UsageError
from harvester.ops.summary import CollectionSummary, Summary, calendar_periods

if TYPE_CHECKING:
    import numpy as np

__all__ = ["check_target", "require", "write_chart"]

INSTALL_HINT = "pip install 'harvester[plot]'"
SIZE_INCHES = (10.0, 5.0)
DPI = 100
MARKERS_BELOW = 60  # points per line under which each period gets a marker


def require() -> None:
    """Raise UsageError unless the ``[plot]`` extra is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"--png needs matplotlib: {INSTALL_HINT}") from None


def check_target(path: Path) -> None:
    """Before any work: the extra is installed and the chart's folder exists."""
    require()
    if not path.parent.is_dir():
        raise UsageError(f"--png {path}: no folder {path.parent}")


def write_chart(summary: Summary, path: Path, *, top: int) -> Path:
    """Draw views per period of the ``top`` collections by views into ``path`` (PNG).

    Written beside, then renamed: a reader never sees half an image.
    """
    check_target(path)
    if summary.granularity == "range":
        raise UsageError("--png: a range output has one period per collection: no time to chart")
    if not summary.collections:
        raise UsageError(f"--png: {summary.output} holds no statistics to chart")
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = summary.collections[:top]
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for collection in shown:
        periods, views = _series(summary.granularity, collection)
        marker = "o" if len(periods) < MARKERS_BELOW else None
        axes.plot(periods, views, marker=marker, markersize=3, label=_label(summary, collection))
    axes.set_title(
        f"Views per {summary.granularity}, top {len(shown)} of {len(summary.collections)} "
        f"collections by views ({summary.output})"
    )
    axes.set_xlabel(f"{summary.granularity} (UTC)")
    axes.set_ylabel("views")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    axes.legend(title="collection", fontsize="small", loc="best")
    temp = path.with_name(f".{path.name}.tmp")
    try:
        figure.savefig(temp, format="png")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _series(granularity: str, collection: CollectionSummary) -> tuple[np.ndarray, np.ndarray]:
    """Every calendar period from the collection's first to its last; NaN where one is missing."""
    import numpy as np  # matplotlib's own dependency

    views = dict(collection.views_by_period)
    periods = list(calendar_periods(granularity, collection.first, collection.last))
    return (
        np.array(periods, dtype="datetime64[D]"),
        np.array([views.get(p, np.nan) for p in periods], dtype=float),
    )


def _label(summary: Summary, collection: CollectionSummary) -> str:
    """The legend entry: the hash, with the account when the data has accounts."""
    if summary.has_accounts:
        return f"{collection.account}/{collection.collection_hash}"
    return collection.collection_hash
