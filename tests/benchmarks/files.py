"""Figure 5: Parquet files per partition, per dataset, for every run the suite made.

For each output folder the other benchmarks left (one run each), and each dataset: the
``*.parquet`` files under it divided by the ``period_start=`` folders (the partitions the run
touched). The figure is the worst ratio over all runs. The run's own report says how many files
it wrote; more files written than found would mean a partition was rewritten within the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from harvester.lake.schema import COLLECTION_STATS, PAGE_STATS
from tests.benchmarks.common import Figure

GOAL = 1.0


def census(output: Path) -> dict[str, tuple[int, int]]:
    """Per dataset: (Parquet files, partition folders)."""
    counts = {}
    for name in (PAGE_STATS, COLLECTION_STATS):
        root = output / name
        files = sum(1 for _ in root.glob("period_start=*/*.parquet"))
        partitions = sum(1 for p in root.glob("period_start=*") if p.is_dir())
        counts[name] = (files, partitions)
    return counts


def run(workdir: Path) -> list[Figure]:
    """The worst files/partition ratio per dataset over the outputs under ``workdir``."""
    outputs = sorted(p.parent.parent for p in workdir.glob("*/_state/last-run.json"))
    if not outputs:
        return [Figure("files / partition", "no run", f"<= {GOAL:g}", False)]
    figures = []
    rewritten = 0
    for name in (PAGE_STATS, COLLECTION_STATS):
        worst, where, files_total, partitions_total = 0.0, "", 0, 0
        for output in outputs:
            files, partitions = census(output)[name]
            files_total += files
            partitions_total += partitions
            ratio = files / partitions if partitions else 0.0
            if ratio >= worst:
                worst, where = ratio, output.name
        figures.append(
            Figure(
                f"files / partition, {name}",
                f"{worst:.2f}",
                f"<= {GOAL:g}",
                worst <= GOAL,
                f"worst of {len(outputs)} runs ({where}); {files_total} files in "
                f"{partitions_total} partitions",
            )
        )
    for output in outputs:
        report = json.loads((output / "_state" / "last-run.json").read_text(encoding="utf-8"))
        found = sum(files for files, _ in census(output).values())
        rewritten += max(0, report["files_written"] - found)
    figures.append(
        Figure(
            "files rewritten within a run",
            str(rewritten),
            "0",
            rewritten == 0,
            "report files_written minus files found, summed over the runs",
        )
    )
    return figures
