"""``harvester verify OUTPUT``: the state's done units against the dataset's rows, no request."""

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
    unreadable: list[BadFile] = field(default_factory=list)  # their partitions count as missing
    unreadable_hint: str = ""  # what to do about them

    @property
    def complete(self) -> bool:
        """Whether the dataset holds everything the state calls done, every file readable."""
        return not self.missing and not self.unreadable

    def text(self, output: object, state: Path) -> str:
        """The lines ``harvester verify`` prints."""
        lines = [
            f"{output}: {self.in_dataset} units in the dataset; state {state}:"
            f" {len(self.missing)} done there but missing from the dataset,"
            f" {self.unknown} in the dataset it does not know"
        ]
        lines += [
            f"unreadable: {bad.path} ({bad.reason}): its partition counts as missing;"
            f" {self.unreadable_hint}"
            for bad in self.unreadable
        ]
        lines += [f"missing: {u}" for u in self.missing[:20]]
        if len(self.missing) > 20:
            lines.append(f"... and {len(self.missing) - 20} more missing units")
        if self.missing:
            lines.append("the next run fetches the missing units again")
        elif not self.unknown and not self.unreadable:
            lines.append("the dataset and the state agree")
        return "\n".join(lines)


def verify(sink: ParquetSink, store: StateStore) -> Verified:
    """Compare every partition's keys with the state; read only, no request."""
    found = reconcile(sink, store, (date.min, date.max), store.granularity, trust_files=False)
    in_dataset = sum(1 for v in found.overlay.values() if v is not None)
    unreadable = [bad for bad, _ in found.unreadable]
    return Verified(
        in_dataset, sorted(found.dropped), found.learnt, unreadable, sink.unreadable_hint
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
