"""``harvester verify OUTPUT``: the state's done units against the dataset's rows, no request.

Every partition is read, page rows included: a unit is *missing* when the state calls it done
and ``collection_stats`` has no row for it, or when it was asked with page statistics and its
page rows are not all there (``page_count`` says how many came; its ``page_stats`` partition
deleted, say). Either makes ``verify`` exit 1, and the next run fetches the unit again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from harvester.errors import BadFile, UsageError
from harvester.job.location import Location
from harvester.lake.fs import check_reachable, open_sink
from harvester.lake.output import read_meta
from harvester.lake.parquet import ParquetSink
from harvester.model import Unit
from harvester.state.record import open_state, reconcile
from harvester.state.store import StateStore, default_state_path

__all__ = ["Verified", "verify", "verify_output"]


@dataclass
class Verified:
    """What ``harvester verify`` found: the state's done units against the dataset's rows."""

    in_dataset: int
    missing: list[Unit]  # done in the state, no rows in the dataset: the next run fetches them
    unknown: int  # rows the state does not hold as done (it learns them at the next run)
    missing_pages: list[Unit] = field(default_factory=list)  # asked with pages, rows gone
    unreadable: list[BadFile] = field(default_factory=list)  # their partitions count as missing
    unreadable_hint: str = ""  # what to do about them

    @property
    def failed(self) -> bool:
        """Whether anything is missing or unreadable (``harvester verify`` exits 1)."""
        return bool(self.missing or self.missing_pages or self.unreadable)

    def text(self, output: object, state: Path) -> str:
        """The lines ``harvester verify`` prints."""
        lines = [
            f"{output}: {self.in_dataset} units in the dataset; state {state}:"
            f" {len(self.missing)} done there but missing from the dataset,"
            f" {self.unknown} in the dataset it does not know;"
            f" {len(self.missing_pages)} asked with page statistics whose page rows are missing"
        ]
        lines += [
            f"unreadable: {bad.path} ({bad.reason}): its partition counts as missing;"
            f" {self.unreadable_hint}"
            for bad in self.unreadable
        ]
        lines += _listed("missing", self.missing)
        lines += _listed("missing pages", self.missing_pages)
        if self.failed:
            lines.append("the next run fetches the missing units again")
        elif not self.unknown and not self.unreadable:
            lines.append("the dataset and the state agree")
        return "\n".join(lines)


def _listed(label: str, units: list[Unit]) -> list[str]:
    """``label: unit`` lines, at most 20 of them."""
    lines = [f"{label}: {u}" for u in units[:20]]
    if len(units) > 20:
        lines.append(f"... and {len(units) - 20} more ({label})")
    return lines


def verify(sink: ParquetSink, store: StateStore) -> Verified:
    """Compare every partition's keys with the state; read only, no request."""
    found = reconcile(sink, store, (date.min, date.max), store.granularity, trust_files=False)
    in_dataset = sum(1 for v in found.overlay.values() if v is not None)
    unreadable = [bad for bad, _ in found.unreadable]
    return Verified(
        in_dataset,
        sorted(found.dropped),
        found.learnt,
        sorted(found.missing_pages),
        unreadable,
        sink.unreadable_hint,
    )


def verify_output(output: str, state_path: Path | None = None) -> tuple[Verified, Path]:
    """``harvester verify OUTPUT``: the output's dataset against its state; no request."""

    try:
        location = Location.parse(output)
    except ValueError as exc:
        raise UsageError(f"verify: {exc}") from None
    check_reachable(location, output)
    meta = read_meta(location)
    if meta is None:
        raise UsageError(f"{location}: not a harvester output (no _harvester/output.json)")
    path = state_path or default_state_path(location)
    sink = open_sink(location, meta.format)
    with open_state(path, meta.granularity) as store:
        return verify(sink, store), path
