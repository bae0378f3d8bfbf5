"""The command line: parse, call the library, map errors to messages and exit codes.

harvester run JOB.yaml [--state PATH] [--refresh] [--wait] [--dry-run] [--log-format json]
                      [--metrics-file PATH] [--pushgateway URL] [--allow-unfenced]
harvester plan JOB.yaml [--state PATH] [--refresh] [--retry-gone] [--json]
harvester validate JOB.yaml
harvester status JOB.yaml [--state PATH]
harvester summary OUTPUT [--since DATE] [--until DATE] [--collection HASH] [--account NAME]
                         [--top N] [--png FILE]
harvester runs OUTPUT [--limit N] [--json]
harvester verify OUTPUT [--state PATH]
harvester maintain OUTPUT [--retention-hours N] [--wait]
harvester simulate [--host 127.0.0.1] [--port 8080] [--config sim.yaml] [--seed N]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sqlite3
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from harvester import __version__
from harvester.errors import (
    EXIT_BAD_JOB,
    EXIT_CLOSED_PIPE,
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_LOCAL_IO,
    HarvesterError,
    JobError,
    Problem,
)
from harvester.logs import LOG_FORMATS, escape_controls, setup_logging
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
        description="Harvest Flipsnack collection statistics into Hive-partitioned Parquet or"
        " Delta tables, on local disk or object storage.",
        epilog="exit codes:\n" + "\n".join(f"  {c:>3}  {m}" for c, m in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # one exit code a line
    )
    parser.add_argument("--version", action="version", version=f"harvester {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run a job file",
        description="Fetch what the job's output does not hold yet and commit it, partition by"
        " partition. One run writes an output at a time (a flock locally, a lease in the store"
        " for s3://). Every file is written over the version it was merged from (If-Match, or"
        " If-None-Match for a new one; locally a check before the rename): a run that lost its"
        " lease, or was overtaken by another writer, writes nothing more and exits 4, naming"
        " the object. A reader sees each partition file whole, the old one or the new one.",
    )
    run.add_argument("job", type=Path, help="the YAML job file")
    run.add_argument(
        "--state", type=Path, help="state database (default: OUTPUT/_state/state.sqlite)"
    )
    run.add_argument("--refresh", action="store_true", help="re-fetch every unit, even those done")
    run.add_argument("--wait", action="store_true", help="wait for another run on the same output")
    run.add_argument(
        "--allow-unfenced",
        action="store_true",
        help="write to an object store that ignores conditional writes (If-Match,"
        " If-None-Match), which is refused otherwise: then nothing keeps a second writer from"
        " overwriting partitions unseen (also: storage: {allow_unfenced: true})",
    )
    run.add_argument(
        "--progress-every",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="off a terminal, a progress line every SECONDS (default 30)",
    )
    run.add_argument(
        "--retry-gone",
        action="store_true",
        help="fetch collections recorded as gone (deleted, not ours: codes 43/46) again",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="plan only: count what would be fetched"
    )
    run.add_argument(
        "--allow-other-endpoint",
        action="store_true",
        help="write to an output filled from another API endpoint (the same API moved);"
        " its record then names both",
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
    run.add_argument(
        "--metrics-file",
        type=Path,
        metavar="PATH",
        help="write Prometheus metrics here after the run (node_exporter's textfile collector)",
    )
    run.add_argument(
        "--pushgateway", metavar="URL", help="push Prometheus metrics to this Pushgateway"
    )

    check = commands.add_parser("validate", help="check a job file; no request, nothing written")
    check.add_argument("job", type=Path, help="the YAML job file")

    plan = commands.add_parser(
        "plan", help="what a run would fetch now and how long the API's limits make it take"
    )
    plan.add_argument("job", type=Path, help="the YAML job file")
    plan.add_argument("--state", type=Path, help="state database, as given to run")
    plan.add_argument("--refresh", action="store_true", help="as run --refresh would")
    plan.add_argument("--retry-gone", action="store_true", help="as run --retry-gone would")
    plan.add_argument("--json", action="store_true", help="the plan as JSON")

    stat = commands.add_parser("status", help="what is done and what failed, from the state")
    stat.add_argument("job", type=Path, help="the YAML job file")
    stat.add_argument("--state", type=Path, help="state database, as given to run")

    summary = commands.add_parser(
        "summary", help="totals, busiest pages and coverage gaps of an output's data"
    )
    summary.add_argument("output", help="the output: a folder, or s3://bucket/prefix")
    summary.add_argument("--since", type=_date, metavar="DATE", help="periods starting on or after")
    summary.add_argument(
        "--until", type=_date, metavar="DATE", help="periods starting on or before"
    )
    summary.add_argument(
        "--collection", action="append", default=[], metavar="HASH", help="only this collection"
    )
    summary.add_argument("--account", metavar="NAME", help="only this account")
    summary.add_argument(
        "--top", type=_positive, default=10, metavar="N", help="collections shown (default 10)"
    )
    summary.add_argument("--png", type=Path, metavar="FILE", help="chart views per period to FILE")

    runs = commands.add_parser("runs", help="the recent runs of an output, newest first")
    runs.add_argument("output", help="the output: a folder or s3://bucket/prefix")
    runs.add_argument(
        "--limit", type=_positive, default=20, metavar="N", help="runs shown (default 20)"
    )
    runs.add_argument("--json", action="store_true", help="a JSON array instead of lines")

    check_lake = commands.add_parser(
        "verify", help="compare an output's dataset with its state; no request (exit 1: missing)"
    )
    check_lake.add_argument("output", help="the output: a folder or s3://bucket/prefix")
    check_lake.add_argument("--state", type=Path, help="state database, as given to run")

    upkeep = commands.add_parser(
        "maintain",
        help="Delta: compact small files, vacuum old versions' files; Iceberg: expire old"
        " snapshots",
    )
    upkeep.add_argument("output", help="the output: a folder or s3://bucket/prefix")
    upkeep.add_argument(
        "--retention-hours",
        type=_positive,
        default=168,
        metavar="N",
        help="keep what versions (snapshots) of the last N hours need (default 168: a week)",
    )
    upkeep.add_argument(
        "--wait", action="store_true", help="wait for a run writing the output to finish"
    )

    sim = commands.add_parser("simulate", help="serve the bundled Flipsnack-compatible simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8080)
    sim.add_argument("--config", type=Path, help="simulator settings (YAML or JSON)")
    sim.add_argument("--seed", type=int, default=None)
    return parser


def _date(text: str) -> date:
    """An argument date: ISO, today, yesterday or -Nd, as in a job file."""
    from harvester.job.fields import Context, calendar_date

    ctx = Context("arguments", datetime.now(UTC).date())
    value = calendar_date(ctx, text, "date")
    if value is None:
        raise argparse.ArgumentTypeError(ctx.problems[0].message)
    return value


def _positive(text: str) -> int:
    """An argument count of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, found {text!r}")
    return int(text)


def _run(args: argparse.Namespace) -> int:
    from harvester.job.parse import load_job
    from harvester.ops import metrics
    from harvester.run.options import RunOptions
    from harvester.run.pipeline import harvest

    job = load_job(args.job)
    export = args.metrics_file is not None or args.pushgateway is not None
    if export and not args.dry_run:
        metrics.check_target(args.metrics_file)  # before any request: the extra, the folder
    options = RunOptions(
        state_path=args.state,
        refresh=args.refresh,
        wait_for_lock=args.wait,
        allow_unfenced=args.allow_unfenced,
        grace_seconds=args.grace,
        retry_gone=args.retry_gone,
        allow_other_endpoint=args.allow_other_endpoint,
        handle_signals=True,
        progress_every=args.progress_every,
        # On a terminal, a live display; in cron mail, CI logs, JSON logs and on a dumb
        # terminal (an editor's shell, which cannot redraw a line), plain lines.
        live_progress=_can_redraw() and args.log_format == "text" and not args.quiet,
    )
    if args.dry_run:
        return _print_plan(job, options, as_json=False)
    report = harvest(job, options)
    if export:
        metrics.export(
            report, job.output, metrics_file=args.metrics_file, pushgateway=args.pushgateway
        )
    _say(report.summary(), logging.INFO if report.exit_code == 0 else logging.WARNING)
    return report.exit_code


def _plan(args: argparse.Namespace) -> int:
    from harvester.job.parse import load_job
    from harvester.run.options import RunOptions

    options = RunOptions(state_path=args.state, refresh=args.refresh, retry_gone=args.retry_gone)
    return _print_plan(load_job(args.job), options, as_json=args.json)


def _print_plan(job: Any, options: Any, *, as_json: bool) -> int:
    """What a run of ``job`` would do now, and the least time it takes; no request."""
    from harvester.ops.estimate import plan_job

    plan = plan_job(job, options)
    _out(plan.to_json() if as_json else "\n".join(plan.lines()))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from harvester.ops.validate import describe

    _out(describe(args.job))
    return 0


def _out(text: str) -> None:
    """A command's answer on stdout: redacted, control characters (but newlines) escaped.

    A line at a time: a pipe closed in the middle of one large write can lose the rest
    without an error, where a small write fails (and the command ends with exit 141).
    """
    for line in escape_controls(redact(text), keep="\n\t").split("\n"):
        sys.stdout.write(line + "\n")


def _can_redraw() -> bool:
    """True when stderr is a terminal that can redraw a line in place (not TERM=dumb)."""
    from rich.console import Console

    console = Console(stderr=True)
    return console.is_terminal and not console.is_dumb_terminal


def _say(text: str, level: int) -> None:
    """The last words on stderr: plain lines, or one JSON record under --log-format json.

    A closed stderr (``2>&1 | head``) loses them quietly: the exit code still says it all.
    """
    text = redact(text)
    if _json_logs:
        logging.getLogger("harvester.summary").log(level, text)
        return
    try:
        print(escape_controls(text, keep="\n\t"), file=sys.stderr, flush=True)
    except BrokenPipeError:
        _discard(sys.stderr)


def _discard(stream: Any) -> None:
    """Point a closed pipe's file descriptor at /dev/null: the interpreter's last flush of
    it at exit would otherwise print a broken-pipe error of its own."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (a test's capture): nothing to flush
        pass


_json_logs = False


def _status(args: argparse.Namespace) -> int:
    from harvester.job.parse import load_job
    from harvester.ops.status import status
    from harvester.run.options import RunOptions

    _out(status(load_job(args.job), RunOptions(state_path=args.state)))
    return 0


def _summary(args: argparse.Namespace) -> int:
    from harvester.ops import chart
    from harvester.ops.display import stdout_console
    from harvester.ops.summary import render, summarize

    if args.png is not None:
        chart.check_target(args.png)  # before the tables: the extra, the folder
    found = summarize(
        args.output,
        since=args.since,
        until=args.until,
        collections=args.collection,
        account=args.account,
    )
    render(found, stdout_console(), top=args.top)
    if args.png is not None:
        print(f"chart: {chart.write_chart(found, args.png, top=args.top)}", file=sys.stderr)
    return 0


def _runs(args: argparse.Namespace) -> int:
    from harvester.ops.display import stdout_console
    from harvester.ops.runs import print_runs, read_runs, report_folders_of, runs_json

    with report_folders_of(args.output) as folders:
        history = read_runs(folders)
    for path, reason in history.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if args.json:
        _out(runs_json(history, args.limit))
    else:
        print_runs(history, args.limit, stdout_console(), Path(args.output))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from harvester.ops.verify import verify_output

    found, state = verify_output(args.output, args.state)
    _out(found.text(args.output, state))
    return 0 if found.complete else 1


def _maintain(args: argparse.Namespace) -> int:
    from harvester.ops.maintain import maintain_output

    for line in maintain_output(args.output, args.retention_hours, wait=args.wait):
        _out(line)
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
    return _settled(_dispatch(args))


_COMMANDS = {
    "run": _run,
    "plan": _plan,
    "validate": _validate,
    "status": _status,
    "summary": _summary,
    "runs": _runs,
    "verify": _verify,
    "maintain": _maintain,
    "simulate": _simulate,
}


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; map what it raises to a message and an exit code."""
    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:  # `harvester runs OUT | head`: the reader has all it wanted
        return EXIT_CLOSED_PIPE
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


def _settled(code: int) -> int:
    """Flush stdout and stderr now, so that a closed pipe ends the command quietly: exit 141
    when stdout was closed (what the shell reports for ``yes | head``), the command's own exit
    code when only stderr was (a run's outcome does not depend on who reads its logs)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            _discard(stream)
            if stream is sys.stdout:
                code = EXIT_CLOSED_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
