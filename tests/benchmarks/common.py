"""What every benchmark shares: the table row, the machine, a recording simulator, child runs.

Every figure is a ratio (or a count) measured within one run, because the machine is shared and
noisy: absolute speeds vary from run to run, ratios of two measurements taken side by side much
less. The harvester always runs as a child process (``harvester run JOB``) so that its CPU time
and peak RSS come from ``os.wait4`` alone, and the simulator runs in a third process so that it
never shares the harvester's interpreter (only, on a 2-core machine, the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from aiohttp import web

from harvester.model import RateLimit
from harvester.simulator import Simulator, SimulatorConfig

API_KEY = "KEY-bench-5f1c"
API_SECRET = "SECRET-bench-77ab"
START = date(2024, 1, 1)
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Figure:
    """One row of the table; ``passed`` is None for a figure that only informs.

    A figure with ``gates=False`` is still measured against its goal, but only informs: the
    table says whether it met the goal, and a miss does not make the suite exit 1 (the README's
    Performance section says why that goal is not met).
    """

    name: str
    measured: str
    goal: str = ""
    passed: bool | None = None
    note: str = ""
    gates: bool = True


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [
        ("CPU", cpu),
        ("cores", str(os.cpu_count())),
        ("Python", platform.python_version()),
        ("aiohttp", version("aiohttp")),
        ("pyarrow", version("pyarrow")),
        ("platform", platform.platform()),
    ]


def hashes(n: int) -> list[str]:
    """``n`` distinct collection hashes the simulator accepts."""
    return [f"bench{i:05d}" for i in range(n)]


def write_job(
    path: Path,
    base_url: str,
    output: Path,
    *,
    collections: int,
    days: int,
    limits: Sequence[RateLimit],
    concurrency: int,
    page_stats: bool = True,
) -> Path:
    """A daily job of ``collections`` x ``days`` units against ``base_url``."""
    job = {
        "api": {
            "base_url": base_url,
            "timeout_seconds": 30,
            "rate_limits": [{"calls": r.calls, "seconds": r.seconds} for r in limits],
        },
        "concurrency": concurrency,
        "retry": {"attempts": 6, "max_backoff_seconds": 1},
        "granularity": "day",
        "page_stats": page_stats,
        "output": str(output),
        "start": START.isoformat(),
        "end": (START + timedelta(days=days - 1)).isoformat(),
        "collections": hashes(collections),
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


# --- child processes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    """How a child process ended and what it cost (from ``os.wait4``)."""

    exit_code: int
    wall: float  # seconds, spawn to exit
    cpu: float  # user + system seconds
    max_rss_mb: float
    stdout: str
    stderr: str


def run_child(
    args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Child:
    """Run ``args`` to completion; its rusage comes from wait4, so it is the child's alone."""
    with (
        open(os.devnull, "rb") as stdin,
        _temp_text() as (out_path, out),
        _temp_text() as (err_path, err),
    ):
        started = time.perf_counter()
        process = subprocess.Popen(args, stdin=stdin, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        out.flush()
        err.flush()
        return Child(
            exit_code=process.returncode,
            wall=wall,
            cpu=usage.ru_utime + usage.ru_stime,
            max_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            stdout=out_path.read_text(encoding="utf-8", errors="replace"),
            stderr=err_path.read_text(encoding="utf-8", errors="replace"),
        )


@contextlib.contextmanager
def _temp_text() -> Iterator[tuple[Path, Any]]:
    import tempfile

    with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as fh:
        path = Path(fh.name)
        try:
            yield path, fh
        finally:
            fh.close()
            path.unlink(missing_ok=True)


def harvester_env() -> dict[str, str]:
    """The environment of a harvester child: our credentials, no proxy."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(FLIPSNACK_API_KEY=API_KEY, FLIPSNACK_API_SECRET=API_SECRET, PYTHONHASHSEED="0")
    return env


def run_harvester(job: Path, *extra: str, cwd: Path | None = None) -> tuple[Child, dict[str, Any]]:
    """``harvester run JOB -q`` in a child; its report (empty for a dry run) and its cost."""
    child = run_child(
        [sys.executable, "-m", "harvester", "run", str(job), "-q", *extra],
        env=harvester_env(),
        cwd=cwd,
    )
    if child.exit_code != 0:
        raise RuntimeError(f"harvester exited {child.exit_code}:\n{child.stderr[-3000:]}")
    report: dict[str, Any] = {}
    if "--dry-run" not in extra:
        output = Path(yaml.safe_load(job.read_text(encoding="utf-8"))["output"])
        report = json.loads((output / "_state" / "last-run.json").read_text(encoding="utf-8"))
    return child, report


# --- a simulator that also records arrival times, in its own process -----------------------


class _Recording(Simulator):
    """The bundled simulator, plus the arrival time of every API request (its rate clock)."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.arrivals: list[float] = []
        self.keys: list[str] = []  # the API key of each arrival, for per-key figures

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(self._clock())
        self.keys.append(request.query.get("apiKey", ""))
        return await super()._handle(request)


class RecordingSimulator:
    """A recording simulator in a spawned process; commands go over a pipe."""

    def __init__(self, config: SimulatorConfig) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(config, child), name="bench-simulator", daemon=True
        )
        self._process.start()
        child.close()
        try:
            if not self._conn.poll(START_TIMEOUT):
                raise TimeoutError("the simulator process did not start in time")
            self.base_url: str = self._conn.recv()
        except (EOFError, TimeoutError) as error:
            self.close()
            raise RuntimeError(f"the simulator process failed to start: {error!r}") from error

    def _ask(self, command: str, *args: Any) -> Any:
        self._conn.send((command, args))
        answer = self._conn.recv()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def counters(self) -> dict[str, Any]:
        """The simulator's counters (requests, codes, rate_limit_violations...)."""
        result: dict[str, Any] = self._ask("counters")
        return result

    def arrivals(self) -> list[float]:
        """Monotonic arrival times of every API request since the last reset."""
        result: list[float] = self._ask("arrivals")
        return result

    def arrivals_by_key(self) -> dict[str, list[float]]:
        """Arrival times of every API request since the last reset, by API key."""
        result: dict[str, list[float]] = self._ask("arrivals_by_key")
        return result

    def reset(self) -> None:
        """Zero the counters and forget the arrivals."""
        self._ask("reset")

    def reconfigure(self, **changes: Any) -> None:
        """Replace fields of the live config."""
        self._ask("reconfigure", changes)

    def close(self) -> None:
        """Stop the child."""
        if self._process.is_alive():
            with contextlib.suppress(OSError, EOFError):
                self._conn.send(("stop", ()))
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _serve(config: SimulatorConfig, conn: Connection) -> None:
    asyncio.run(_serve_until_stopped(_Recording(config), conn))


async def _serve_until_stopped(simulator: _Recording, conn: Connection) -> None:
    conn.send(await simulator.start())
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                command, args = await loop.run_in_executor(None, conn.recv)
            except (EOFError, OSError):
                return
            if command == "stop":
                return
            try:
                conn.send(_command(simulator, command, args))
            except Exception as error:  # the parent re-raises it
                conn.send(error)
    finally:
        await simulator.stop()


def _command(simulator: _Recording, command: str, args: tuple[Any, ...]) -> Any:
    if command == "counters":
        return simulator.counters()
    if command == "arrivals":
        return list(simulator.arrivals)
    if command == "arrivals_by_key":
        by_key: dict[str, list[float]] = {}
        for key, at in zip(simulator.keys, simulator.arrivals, strict=True):
            by_key.setdefault(key, []).append(at)
        return by_key
    if command == "reset":
        simulator.reset_counters()
        simulator.arrivals.clear()
        simulator.keys.clear()
        return None
    if command == "reconfigure":
        simulator.reconfigure(**args[0])
        return None
    raise ValueError(f"unknown command {command!r}")


def sim_config(**overrides: Any) -> SimulatorConfig:
    """The simulator config of the benchmarks: our key, then ``overrides``."""
    settings: dict[str, Any] = {"seed": 11, "keys": {API_KEY: API_SECRET}, **overrides}
    return SimulatorConfig(**settings)
