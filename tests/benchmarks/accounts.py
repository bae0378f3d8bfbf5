"""Figure: 50 accounts in one job, one process: each account's budget use, and the client's cost.

One simulator process with 50 keys, each with its own rate windows (scaled limits: 5/1 s and
20/5 s, so the 5 s window binds at 4 calls/s a key, 200 calls/s in all); latency 50–300 ms.
One ``harvester run`` of a job listing the 50 accounts, each with its own collections. The
simulator records every request's arrival and key; each key's steady rate is measured over
whole periods of its binding window after its initial burst, as for the one-key figure
(:mod:`tests.benchmarks.budget`). Here the scheduler, 50 limiters and 50 budget files share
one event loop: the client's own cost per call is what can stop it keeping every key busy.
Each call holds its place until its answer, so a 5 s period gives up about one round trip:
the ceiling is about 0.975, and the worst of 50 keys sits a little below it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from harvester.model import RateLimit
from harvester.pacing.protocol import BUDGET_DIR_ENV
from tests.benchmarks.budget import binding, steady_use, units_for
from tests.benchmarks.common import (
    START,
    Figure,
    RecordingSimulator,
    harvester_env,
    run_child,
    sim_config,
)

ACCOUNTS = 50
LIMITS = (RateLimit(5, 1.0), RateLimit(20, 5.0))
LATENCY = (0.05, 0.3)
PERIODS = 3
DAYS = 9
CONCURRENCY = 64
GOAL = 0.92  # the worst of 50 keys; the ceiling is about 0.975 (see the docstring)


def _keys() -> dict[str, str]:
    return {f"KEY-acct{i:02d}-bench": f"SECRET-acct{i:02d}-bench" for i in range(ACCOUNTS)}


def write_job(path: Path, base_url: str, output: Path, units_per_account: int) -> Path:
    """A daily job of ``ACCOUNTS`` accounts, each with enough collections for its units."""
    collections = -(-units_per_account // DAYS)
    accounts = [
        {
            "name": f"acct{i:02d}",
            "key_env": f"ACCT{i:02d}_KEY",
            "secret_env": f"ACCT{i:02d}_SECRET",
            "collections": [f"a{i:02d}c{j:03d}" for j in range(collections)],
        }
        for i in range(ACCOUNTS)
    ]
    job: dict[str, Any] = {
        "api": {
            "base_url": base_url,
            "timeout_seconds": 30,
            "rate_limits": [{"calls": r.calls, "seconds": r.seconds} for r in LIMITS],
        },
        "concurrency": CONCURRENCY,
        "retry": {"attempts": 6, "max_backoff_seconds": 1},
        "granularity": "day",
        "page_stats": False,
        "output": str(output),
        "start": START.isoformat(),
        "end": START.replace(day=DAYS).isoformat(),
        "accounts": accounts,
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


def run(workdir: Path) -> list[Figure]:
    """About half a minute: 50 accounts x ~90 units."""
    keys = _keys()
    limit = binding(LIMITS)
    per_account = units_for(limit, PERIODS)
    with RecordingSimulator(sim_config(keys=keys, rate_limits=LIMITS, latency=LATENCY)) as sim:
        job = write_job(
            workdir / "accounts.yaml", sim.base_url, workdir / "accounts-out", per_account
        )
        env = harvester_env()
        env[BUDGET_DIR_ENV] = str(workdir / "accounts-budget")
        for i, (key, secret) in enumerate(keys.items()):
            env[f"ACCT{i:02d}_KEY"], env[f"ACCT{i:02d}_SECRET"] = key, secret
        child = run_child(
            [sys.executable, "-m", "harvester", "run", str(job), "-q"], env=env, cwd=workdir
        )
        if child.exit_code != 0:
            raise RuntimeError(f"harvester exited {child.exit_code}:\n{child.stderr[-3000:]}")
        by_key = sim.arrivals_by_key()
        codes = sim.counters()["codes"]
        # The same job again, every unit done: start-up, plan and shutdown, no call.
        idle = run_child(
            [sys.executable, "-m", "harvester", "run", str(job), "-q"], env=env, cwd=workdir
        )
    violations = codes.get("31", 0) + codes.get("32", 0)
    uses = []
    for key in keys:
        _, rate = steady_use(sorted(by_key.get(key, [])), limit)
        uses.append(rate / (limit.calls / limit.seconds))
    calls = sum(len(times) for times in by_key.values())
    worst, mean = min(uses), sum(uses) / len(uses)
    return [
        Figure(
            f"budget use per account, {ACCOUNTS} accounts, worst",
            f"{worst:.3f}",
            f">= {GOAL}",
            worst >= GOAL,
            f"mean {mean:.3f}; {ACCOUNTS} keys at {LIMITS[0].calls}/{LIMITS[0].seconds:g}s + "
            f"{limit.calls}/{limit.seconds:g}s, latency {LATENCY[0] * 1000:.0f}-"
            f"{LATENCY[1] * 1000:.0f} ms, concurrency {CONCURRENCY}; {calls} requests, "
            f"run {child.wall:.0f} s",
        ),
        Figure(f"31/32 answers, {ACCOUNTS} accounts", str(violations), "0", violations == 0),
        Figure(
            f"harvester CPU ms per call, {ACCOUNTS} accounts",
            f"{(child.cpu - idle.cpu) * 1000 / max(calls, 1):.2f}",
            note=f"{child.cpu:.1f} s CPU for {calls} calls, less {idle.cpu:.1f} s for the same "
            "run with every unit done (start-up, plan, shutdown)",
        ),
    ]


if __name__ == "__main__":  # one figure alone: python -m tests.benchmarks.accounts
    import tempfile

    from tests.benchmarks.__main__ import table

    with tempfile.TemporaryDirectory() as folder:
        print(table(run(Path(folder))))
