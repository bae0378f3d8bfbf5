"""The rate-limit budget, end to end: a ~20 s regression guard for ``make bench``'s figure 1.

The harvester (``harvester run`` in a child process) against a simulator in its own process
that records every request's arrival. Limits 20/1 s and 60/5 s: the 5 s window binds (12
calls/s; each call holds its place for its round trip too, so the 1 s window allows about
16/s), and four whole periods follow the initial burst within about 25 s. Latency is spread
uniformly over 50..300 ms and 48 workers keep it from binding. The floor is generous (the
ceiling is about 0.96: one round trip per 5 s period): this guards against a limiter that
idles, not noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester.model import RateLimit
from tests.benchmarks.budget import measure

LIMITS = (RateLimit(20, 1.0), RateLimit(60, 5.0))
FLOOR = 0.9


@pytest.mark.slow
def test_budget_use_without_a_single_limit_answer(tmp_path: Path) -> None:
    run = measure(tmp_path, LIMITS, periods=4, latency=(0.05, 0.3), concurrency=48)
    assert run.violations == 0, f"{run.violations} requests answered 31/32"
    assert run.periods == 4
    assert run.use >= FLOOR, (
        f"budget use {run.use:.3f} ({run.steady_rate:.1f} calls/s against "
        f"{LIMITS[1].calls / LIMITS[1].seconds:g}/s allowed)"
    )
