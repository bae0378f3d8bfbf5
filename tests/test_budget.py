"""The rate-limit budget, end to end: a ~20 s regression guard for ``make bench``'s figure 1.

The harvester (``harvester run`` in a child process) against a simulator in its own process
that records every request's arrival. Limits 20/0.5 s and 60/2 s: the 2 s window binds (30
calls/s), so six whole periods follow the initial burst within about 15 s. Latency is spread
uniformly over 50 ms..1 s and 48 workers keep it from binding. The floor is generous (the
benchmark asks 0.98 of a longer run): this guards against a limiter that idles, not noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester.model import RateLimit
from tests.benchmarks.budget import measure

LIMITS = (RateLimit(20, 0.5), RateLimit(60, 2.0))
FLOOR = 0.9


@pytest.mark.slow
def test_budget_use_without_a_single_limit_answer(tmp_path: Path) -> None:
    run = measure(tmp_path, LIMITS, periods=6, latency=(0.05, 1.0), concurrency=48)
    assert run.violations == 0, f"{run.violations} requests answered 31/32"
    assert run.periods == 6
    assert run.use >= FLOOR, (
        f"budget use {run.use:.3f} ({run.steady_rate:.1f} calls/s against "
        f"{LIMITS[1].calls / LIMITS[1].seconds:g}/s allowed)"
    )
