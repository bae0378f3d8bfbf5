"""The run report's human summary says what each figure is."""

from __future__ import annotations

from harvester.run.report import RunReport


def _report(**fields: object) -> RunReport:
    report = RunReport("r1", "job.yaml", "out", "out/_state/state.sqlite", "2026-03-01T00:00:00")
    for name, value in fields.items():
        setattr(report, name, value)
    return report


def test_the_rate_limit_line_tells_wall_clock_from_summed_waits() -> None:
    report = _report(
        rate_limit_waits=18,
        rate_limit_wait_seconds=176.4,
        rate_limit_held_seconds=21.0,
        rate_limit_answers=0,
        elapsed_seconds=84.0,
    )
    assert (
        "rate limit: requests held back 21.0 s (25%) of the 84.0 s run (176.4 s summed over the"
        " 18 requests that waited); 0 limit answers"
    ) in report.summary().splitlines()


def test_no_rate_limit_line_when_nothing_waited() -> None:
    assert "rate limit" not in _report().summary()
