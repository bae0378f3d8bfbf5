"""``python -m tests.benchmarks [--long] [--only NAME ...] [--keep DIR]``: run, print one table.

Exit status 1 when a gating figure misses its goal, so a script can gate on it; 0 otherwise. A
figure that does not gate (client overhead: its goal is not met, see the README's Performance
section) is shown as ``info`` with whether it met its goal, and never sets the exit status.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.benchmarks import (
    accounts,
    baseline,
    budget,
    commit,
    files,
    lake_costs,
    memory,
    overhead,
    planning,
)
from tests.benchmarks.common import Figure, machine

Benchmark = Callable[[Path], list[Figure]]

# Files after the runs whose outputs it counts; accounts after it, as in the README's table;
# the lake's costs last (their outputs sit in a folder of their own, which files does not count).
SUITE: dict[str, Benchmark] = {
    "budget": budget.run,
    "overhead": overhead.run,
    "memory": memory.run,
    "planning": planning.run,
    "baseline": baseline.run,
    "files": files.run,
    "accounts": accounts.run,
    "commit": commit.run,
    "lake-costs": lake_costs.run,
}
LONG: dict[str, Benchmark] = {"budget-long": budget.run_long}


def _goal(f: Figure) -> str:
    """The goal column: a non-gating figure's goal says whether it was met."""
    if not f.goal:
        return "-"
    if f.gates or f.passed is None:
        return f.goal
    return f"{f.goal} ({'met' if f.passed else 'not met: see README'})"


def _result(f: Figure) -> str:
    """The result column: pass or FAIL for a gating figure, info for every other one."""
    if f.passed is None or not f.gates:
        return "info"
    return "pass" if f.passed else "FAIL"


def table(figures: list[Figure]) -> str:
    """The figures as one aligned text table, notes numbered beneath it."""
    header = ("#", "figure", "measured", "goal", "result")
    rows = [(str(i), f.name, f.measured, _goal(f), _result(f)) for i, f in enumerate(figures, 1)]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [line, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    out.append(line)
    out += [f"[{i}] {f.note}" for i, f in enumerate(figures, 1) if f.note]
    return "\n".join(out)


def verdict(figures: list[Figure]) -> tuple[int, str]:
    """The suite's exit status and the line that explains it.

    1 when a gating figure missed its goal; figures that only inform, met or not, never count.
    """
    numbered = list(enumerate(figures, 1))
    failed = [str(i) for i, f in numbered if f.gates and f.passed is False]
    missed = [str(i) for i, f in numbered if not f.gates and f.passed is False]
    aside = f"; not gating, goal not met: {', '.join(missed)} (see README)" if missed else ""
    if failed:
        return 1, f"exit 1: missed their goals: {', '.join(failed)}{aside}"
    return 0, f"exit 0: every gating figure met its goal{aside}"


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks in one working folder; print the machine and the table."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument(
        "--long", action="store_true", help="only budget use at 5/s + 60/min (~3 min)"
    )
    parser.add_argument("--only", nargs="+", choices=[*SUITE, *LONG], help="run these only")
    parser.add_argument("--keep", type=Path, help="work (and leave the outputs) in this folder")
    args = parser.parse_args(argv)
    chosen = LONG if args.long else SUITE
    if args.only:
        chosen = {name: {**SUITE, **LONG}[name] for name in args.only}
    figures: list[Figure] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="harvester-bench-") as temp:
        workdir = args.keep or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name, bench in chosen.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            figures += bench(workdir)
    print("\n".join(f"{k:9s} {v}" for k, v in machine()))
    print(f"{'suite':9s} {time.monotonic() - started:.0f} s ({', '.join(chosen)})")
    print(table(figures))
    code, why = verdict(figures)
    print(why)
    return code


if __name__ == "__main__":
    sys.exit(main())
