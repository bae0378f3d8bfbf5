"""The command line: parse, call the library, map errors to messages and exit codes.

harvester run JOB.yaml [--state PATH] [--refresh] [--wait] [--dry-run] [--log-format json]
harvester simulate [--host 127.0.0.1] [--port 8080] [--config sim.yaml] [--seed N]
"""

from __future__ import annotations

import argparse
import logging
import math
import sqlite3
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from harvester import __version__
from harvester.errors import (
    EXIT_BAD_JOB,
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_LOCAL_IO,
    HarvesterError,
    JobError,
    Problem,
)
from harvester.logs import LOG_FORMATS, setup_logging
from harvester.redact import redact

__all__ = ["main"]

log = logging.getLogger("harvester")


def _seconds(text: str) -> float:
    """An argument that is a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, found {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harvester",
        description="Harvest Flipsnack collection statistics into Hive-partitioned Parquet.",
        epilog="exit codes:\n" + "\n".join(f"  {c:>3}  {m}" for c, m in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # one exit code a line
    )
    parser.add_argument("--version", action="version", version=f"harvester {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a job file")
    run.add_argument("job", type=Path, help="the YAML job file")
    run.add_argument(
        "--state", type=Path, help="state database (default: OUTPUT/_state/state.sqlite)"
    )
    run.add_argument("--refresh", action="store_true", help="re-fetch every unit, even those done")
    run.add_argument("--wait", action="store_true", help="wait for another run on the same output")
    run.add_argument(
        "--dry-run", action="store_true", help="plan only: count what would be fetched"
    )
    run.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    loudness = run.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log every retry and commit")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    run.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="after SIGINT/SIGTERM, how long in-flight requests may finish (default 10)",
    )

    stat = commands.add_parser("status", help="what is done and what failed, from the state")
    stat.add_argument("job", type=Path, help="the YAML job file")
    stat.add_argument("--state", type=Path, help="state database, as given to run")

    sim = commands.add_parser("simulate", help="serve the bundled Flipsnack-compatible simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8080)
    sim.add_argument("--config", type=Path, help="simulator settings (YAML or JSON)")
    sim.add_argument("--seed", type=int, default=None)
    return parser


def _run(args: argparse.Namespace) -> int:
    from harvester.config import load_job
    from harvester.pipeline import RunOptions, harvest, plan_pending

    job = load_job(args.job)
    options = RunOptions(
        state_path=args.state,
        refresh=args.refresh,
        wait_for_lock=args.wait,
        grace_seconds=args.grace,
    )
    if args.dry_run:
        total, pending = plan_pending(job, options)
        note = ""
        if job.discover:
            note = " (discover: the account's collections are listed at run time)"
        print(
            f"{job.source}: {total} units in the job, {pending} to fetch now "
            f"(dry run: no request made){note}"
        )
        return 0
    report = harvest(job, options)
    _say(report.summary(), logging.INFO if report.exit_code == 0 else logging.WARNING)
    return report.exit_code


def _say(text: str, level: int) -> None:
    """The last words on stderr: plain lines, or one JSON record under --log-format json."""
    text = redact(text)
    if _json_logs:
        logging.getLogger("harvester.summary").log(level, text)
    else:
        print(text, file=sys.stderr)


_json_logs = False


def _status(args: argparse.Namespace) -> int:
    from harvester.config import load_job
    from harvester.pipeline import RunOptions, status

    print(redact(status(load_job(args.job), RunOptions(state_path=args.state))))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import yaml

    from harvester.simulator import SimulatorConfig, config_from_mapping, serve

    config = SimulatorConfig()
    if args.config is not None:
        try:
            data = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
            config = config_from_mapping(data)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise JobError([Problem(str(args.config), "simulator", str(exc))]) from exc
    if args.seed is not None:
        config.seed = args.seed
    serve(config, args.host, args.port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harvester`` command; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    level = logging.INFO
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    elif getattr(args, "quiet", False):
        level = logging.WARNING
    global _json_logs
    _json_logs = getattr(args, "log_format", "text") == "json"
    setup_logging("json" if _json_logs else "text", level)
    try:
        commands = {"run": _run, "status": _status, "simulate": _simulate}
        return commands[args.command](args)
    except JobError as exc:
        _say(f"error: invalid job:\n{exc}", logging.ERROR)
        return EXIT_BAD_JOB
    except HarvesterError as exc:
        _say(f"error: {exc}", logging.ERROR)
        return exc.exit_code
    except (OSError, sqlite3.Error) as exc:  # the disk, not the API: full, read-only, denied
        _say(f"error: cannot read or write local files: {exc}", logging.ERROR)
        return EXIT_LOCAL_IO
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: say so, with a traceback that cannot carry a secret
        _say("internal error (a bug in harvester):\n" + traceback.format_exc(), logging.CRITICAL)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
