"""The benchmark table and its exit status (the benchmarks themselves run with `make bench`)."""

from __future__ import annotations

from tests.benchmarks.__main__ import table, verdict
from tests.benchmarks.common import Figure
from tests.benchmarks.overhead import overhead_figure

BUDGET = Figure("budget use", "0.990", ">= 0.98", True)
CPU = Figure("CPU s per 1,000 units", "0.45", note="raw loop 0.19")
MISSED_OVERHEAD = overhead_figure(0.46, "2847 vs 6205 units/s")


def test_the_overhead_figure_informs_and_says_its_goal_is_not_met() -> None:
    text = table([BUDGET, MISSED_OVERHEAD, CPU])
    body = [line for line in text.splitlines() if line.startswith(("1 ", "2 ", "3 "))]
    assert body[1].split()[-1] == "info"
    assert ">= 0.8 (not met: see README)" in body[1]
    assert body[0].split()[-1] == "pass" and body[2].split()[-1] == "info"
    assert "[2] 2847 vs 6205 units/s" in text


def test_the_suite_passes_when_only_a_non_gating_figure_misses() -> None:
    code, why = verdict([BUDGET, MISSED_OVERHEAD, CPU])
    assert code == 0
    assert why == (
        "exit 0: every gating figure met its goal; not gating, goal not met: 2 (see README)"
    )


def test_a_gating_miss_still_fails_the_suite() -> None:
    missed = Figure("peak RSS 200 k / 20 k units", "1.30", "<= 1.2", False)
    code, why = verdict([BUDGET, MISSED_OVERHEAD, missed])
    assert code == 1
    assert why.startswith("exit 1: missed their goals: 3;")
    assert table([missed]).splitlines()[3].split()[-1] == "FAIL"


def test_a_non_gating_figure_that_meets_its_goal_says_so() -> None:
    met = overhead_figure(0.85, "")
    assert not met.gates and met.passed
    assert ">= 0.8 (met)" in table([met]) and table([met]).splitlines()[3].split()[-1] == "info"
    assert verdict([BUDGET, met]) == (0, "exit 0: every gating figure met its goal")
