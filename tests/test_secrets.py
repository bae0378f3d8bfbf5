"""Secrets: the API key and secret never appear in anything the harvester prints or writes.

Each run is a real ``python -m harvester`` subprocess; while it runs, every file under its output
and state folders is read again and again (so the SQLite ``-wal``/``-shm`` files, temporary files
and the lock's contents are seen while they exist), and afterwards stdout and stderr are too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml

from harvester.simulator import FAULT_KINDS, SimulatorConfig, SimulatorThread
from tests.conftest import (
    API_KEY,
    API_SECRET,
    SIM_LIMITS,
    assert_complete,
    job_dict,
    run_cli,
)

JobFile = Callable[..., Path]

WRONG_SECRET = "WRONG-SECRET-31f7-harvest-test"
UNKNOWN_KEY = "UNKNOWN-KEY-8c2a-harvest-test"
# Credentials with characters a URL must encode: a leak of the encoded form is a leak too.
AWKWARD_KEY = "K3y with/slash+plus=eq&amp%"
AWKWARD_SECRET = "S3cret with/slash+plus=eq&amp%"
TRANSIENT = tuple(sorted(FAULT_KINDS - {"bad_payload"}))  # every fault a retry outlives
MIXED_FAULTS = {**dict.fromkeys(TRANSIENT, 0.025), "bad_payload": 0.05}  # 35% faulty
FAST_WINDOWS = [{"calls": 10, "seconds": 0.05}, {"calls": 40, "seconds": 0.2}]
FAST_RETRY = {"attempts": 12, "max_backoff_seconds": 0.05}


def needles(*values: str) -> dict[bytes, str]:
    """Every form a value could take in a file or a stream, mapped to a name for messages."""
    forms: dict[bytes, str] = {}
    for value in values:
        for name, text in (
            ("raw", value),
            ("url", quote(value, safe="")),
            ("form", quote_plus(value)),
            ("json", json.dumps(value)[1:-1]),
        ):
            forms[text.encode()] = f"{name} form of {value[:6]}..."
        forms[value.encode("utf-16-le")] = f"UTF-16 form of {value[:6]}..."
    return forms


class Scanner:
    """Reads every file under some folders until stopped; remembers the names and any leak."""

    def __init__(self, folders: Iterable[Path], forms: dict[bytes, str]) -> None:
        self.folders = list(folders)
        self.forms = forms
        self.seen: set[str] = set()
        self.leaks: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Scanner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.scan()  # and what is left at the end

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scan()
            time.sleep(0.01)

    def scan(self) -> None:
        for folder in self.folders:
            for path in folder.rglob("*") if folder.exists() else ():
                try:
                    data = path.read_bytes()
                except (FileNotFoundError, IsADirectoryError):  # gone, or a folder
                    continue
                self.seen.add(path.name)
                self.leaks.update(
                    f"{path.name}: {what}" for form, what in self.forms.items() if form in data
                )

    def check(self, *streams: str) -> None:
        for i, stream in enumerate(streams):
            data = stream.encode()
            self.leaks.update(
                f"stream {i}: {what}" for form, what in self.forms.items() if form in data
            )
        assert not self.leaks, sorted(self.leaks)


def run_scanned(
    args: list[str], env: dict[str, str], folders: Iterable[Path], forms: dict[bytes, str]
) -> tuple[int, str, str, Scanner]:
    """Run the CLI while scanning ``folders``; check every byte for ``forms``."""
    scanner = Scanner(folders, forms).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "harvester", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        scanner.stop()
    scanner.check(done.stdout, done.stderr)
    return done.returncode, done.stdout, done.stderr, scanner


def test_the_scanner_finds_every_form_of_a_planted_secret(tmp_path: Path) -> None:
    forms = needles(AWKWARD_KEY)
    for i, text in enumerate((quote(AWKWARD_KEY, safe=""), quote_plus(AWKWARD_KEY))):
        (tmp_path / "deep" / str(i)).mkdir(parents=True)
        (tmp_path / "deep" / str(i) / "leak.bin").write_bytes(b"\0x" + text.encode() + b"\0")
    scanner = Scanner([tmp_path], forms)
    scanner.scan()
    assert scanner.leaks == {"leak.bin: url form of K3y wi...", "leak.bin: form form of K3y wi..."}
    with pytest.raises(AssertionError):
        Scanner([], forms).check("", f"GET /v1/?apiKey={quote_plus(AWKWARD_KEY)}")


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """The conftest simulator, also knowing the awkward key; a stall above the timeout."""
    return SimulatorConfig(
        seed=19,  # its fault draws bring every kind of MIXED_FAULTS within 60 requests
        keys={API_KEY: API_SECRET, AWKWARD_KEY: AWKWARD_SECRET},
        rate_limits=SIM_LIMITS,
        latency=(0.0, 0.003),
        retry_after=0.05,
        slow_seconds=2.0,
    )


def faulty_job(job_file: JobFile, simulator: SimulatorThread, **overrides: Any) -> Path:
    """A job against the simulator that retries fast through every fault."""
    api = {"base_url": simulator.base_url, "timeout_seconds": 0.5, "rate_limits": FAST_WINDOWS}
    return job_file(**{"api": api, "concurrency": 8, "retry": FAST_RETRY, **overrides})


@pytest.mark.parametrize(
    ("log_args", "separate_state"),
    [(["-v"], False), (["--log-format", "json", "-v"], True)],
    ids=["text", "json-separate-state"],
)
def test_no_secret_in_anything_a_faulty_run_prints_or_writes(
    log_args: list[str],
    separate_state: bool,
    tmp_path: Path,
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(faults=MIXED_FAULTS)
    path = faulty_job(job_file, simulator, end="2026-04-15")
    state = tmp_path / "elsewhere" / "state.sqlite"
    args = ["run", str(path), *log_args, *(["--state", str(state)] if separate_state else [])]
    code, _, stderr, scanner = run_scanned(
        args, env, [output_dir, state.parent], needles(API_KEY, API_SECRET)
    )

    assert code == 1, stderr  # the bad payloads fail their units
    counters = simulator.counters()
    assert set(counters["faults"]) == set(MIXED_FAULTS), counters["faults"]
    assert counters["codes"]["20"] > 0 and counters["bad_signatures"] == 0
    # What was scanned: every kind of file a run writes, some only while it runs.
    names = scanner.seen
    assert {
        "state.sqlite",
        "state.sqlite-wal",
        "state.sqlite-shm",
        "harvester.lock",
        "last-run.json",
        "part-0.parquet",
    } <= names, sorted(names)
    assert any(n.startswith("run-") and n.endswith(".jsonl") for n in names)  # quarantine
    assert any(n.startswith("run-") and n.endswith(".json") for n in names)  # report
    assert "retrying" in stderr and "failed:" in stderr  # -v logged every retry


def test_no_secret_with_url_special_characters_in_the_credentials(
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    simulator.reconfigure(faults=dict.fromkeys(TRANSIENT, 0.03))
    path = faulty_job(job_file, simulator)
    awkward = {**env, "FLIPSNACK_API_KEY": AWKWARD_KEY, "FLIPSNACK_API_SECRET": AWKWARD_SECRET}
    code, _, stderr, _ = run_scanned(
        ["run", str(path), "-v"], awkward, [output_dir], needles(AWKWARD_KEY, AWKWARD_SECRET)
    )
    assert code == 0, stderr
    assert simulator.counters()["bad_signatures"] == 0  # the awkward key really was used
    assert_complete(path, sim_config)


@pytest.mark.parametrize(
    ("key", "secret", "code"),
    [(API_KEY, WRONG_SECRET, 44), (UNKNOWN_KEY, API_SECRET, 41)],
    ids=["wrong-secret", "unknown-key"],
)
def test_no_secret_when_the_api_rejects_the_credentials(
    key: str,
    secret: str,
    code: int,
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    path = job_file()
    rejected = {**env, "FLIPSNACK_API_KEY": key, "FLIPSNACK_API_SECRET": secret}
    exit_code, _, stderr, scanner = run_scanned(
        ["run", str(path), "-v"], rejected, [output_dir], needles(key, secret, API_SECRET)
    )
    assert exit_code == 3, stderr
    assert f"the API rejected the credentials: code {code}" in stderr
    counters = simulator.counters()  # requests still in flight at the stop are abandoned
    assert set(counters["codes"]) == {str(code)} and counters["requests"] <= 4  # concurrency
    assert {"state.sqlite", "harvester.lock", "last-run.json"} <= scanner.seen


def test_no_secret_when_the_api_is_unreachable(
    tmp_path: Path,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connection refused
    job = job_dict(
        f"http://127.0.0.1:{port}/v1/",
        output_dir,
        concurrency=2,
        retry={**FAST_RETRY, "circuit_breaker_seconds": 0.3},
    )
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump(job))
    code, _, stderr, _ = run_scanned(
        ["run", str(path), "-v", "--log-format", "json"],
        env,
        [output_dir],
        needles(API_KEY, API_SECRET),
    )
    assert code == 1, stderr
    assert "ClientConnectorError" in stderr and "the API looks down" in stderr


# --- credentials set-up ----------------------------------------------------------------------


# (After "apiKey: " the redactor masks the next word, "credentials", too: so it is left out here.)
IN_THE_FILE = "must not be in the job file: put the value in an environment variable"
NOT_A_NAME = "expected the NAME of an environment variable (like FLIPSNACK_API_KEY)"


@pytest.mark.parametrize(
    ("api", "top", "field", "says"),
    [
        ({"key": API_KEY}, {}, "api.key", IN_THE_FILE),
        ({"api_secret": API_SECRET}, {}, "api.api_secret", IN_THE_FILE),
        ({"apiKey": API_KEY}, {}, "api.apiKey", IN_THE_FILE),
        ({}, {"secret": API_SECRET}, "secret", IN_THE_FILE),
        ({"key_env": API_KEY}, {}, "api.key_env", NOT_A_NAME),
        ({"secret_env": API_SECRET}, {}, "api.secret_env", NOT_A_NAME),
        (
            {"base_url": f"https://{API_KEY}:{API_SECRET}@api.flipsnack.com/v1/"},
            {},
            "api.base_url",
            "must not hold credentials (user:password@)",
        ),
    ],
)
def test_a_literal_credential_in_the_job_file_is_refused_without_echo(
    api: dict[str, str],
    top: dict[str, str],
    field: str,
    says: str,
    tmp_path: Path,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    job = job_dict(simulator.base_url, output_dir, **top)
    job["api"].update(api)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    done = run_cli("run", str(path), env=env)
    assert done.returncode == 2, done.stderr
    problems = done.stderr.splitlines()[1:]
    assert len(problems) == 1 and problems[0].startswith(f"{path}: {field}: ")
    assert says in problems[0]
    Scanner([], needles(API_KEY, API_SECRET)).check(done.stdout, done.stderr)
    assert simulator.counters()["requests"] == 0 and not output_dir.exists()


def test_credentials_from_name_file_variables(
    tmp_path: Path,
    job_file: JobFile,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "key").write_text(API_KEY + "\n")  # as `echo` writes it
    (secrets / "secret").write_text(API_SECRET + "\n")
    from_files = {k: v for k, v in env.items() if not k.startswith("FLIPSNACK_")}
    from_files |= {
        "FLIPSNACK_API_KEY_FILE": str(secrets / "key"),
        "FLIPSNACK_API_SECRET_FILE": str(secrets / "secret"),
    }
    path = job_file()
    code, _, stderr, _ = run_scanned(
        ["run", str(path)], from_files, [output_dir], needles(API_KEY, API_SECRET)
    )
    assert code == 0, stderr
    assert simulator.counters()["bad_signatures"] == 0
    assert_complete(path, sim_config)


@pytest.mark.parametrize(
    ("drop", "extra", "named"),
    [
        (("FLIPSNACK_API_SECRET",), {}, ["FLIPSNACK_API_SECRET"]),
        (
            ("FLIPSNACK_API_KEY", "FLIPSNACK_API_SECRET"),
            {},
            ["FLIPSNACK_API_KEY", "FLIPSNACK_API_SECRET"],
        ),
        (
            ("FLIPSNACK_API_KEY",),
            {"FLIPSNACK_API_KEY_FILE": "/nonexistent/key"},
            ["FLIPSNACK_API_KEY_FILE"],
        ),
    ],
    ids=["secret", "both", "unreadable-file"],
)
def test_a_missing_credential_exits_2_naming_the_variable_before_any_request(
    drop: tuple[str, ...],
    extra: dict[str, str],
    named: list[str],
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    path = job_file()
    missing = {k: v for k, v in env.items() if k not in drop} | extra
    done = run_cli("run", str(path), env=missing)
    assert done.returncode == 2, done.stderr
    for name in named:
        assert f"environment: {name}: " in done.stderr
    Scanner([], needles(API_KEY, API_SECRET)).check(done.stdout, done.stderr)
    assert simulator.counters()["requests"] == 0
    assert not output_dir.exists()


def test_the_credential_variables_are_the_ones_the_job_names(
    job_file: JobFile,
    simulator: SimulatorThread,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    path = job_file(
        api={"base_url": simulator.base_url, "key_env": "ACME_KEY", "secret_env": "ACME_SECRET"}
    )
    done = run_cli("run", str(path), env=env)  # FLIPSNACK_* are set, ACME_* are not
    assert done.returncode == 2, done.stderr
    assert "environment: ACME_KEY: " in done.stderr and "environment: ACME_SECRET: " in done.stderr
    assert simulator.counters()["requests"] == 0 and not output_dir.exists()


# A secret that JSON encoding escapes (a quote, a backslash, a non-ASCII letter): redacting the
# encoded text would miss it, so every writer must redact before encoding.
ESCAPED_SECRET = 'S3c"ret\\back-\u00e4-7d1e-harvest'


def test_reports_the_state_and_the_quarantine_redact_before_encoding(tmp_path: Path) -> None:
    from datetime import date

    from harvester.errors import InvalidPayload
    from harvester.model import Unit
    from harvester.redact import forget_secrets, register_secrets
    from harvester.run.commit import Quarantine
    from harvester.run.report import FailedEntry, RunReport, report_dict, write_report
    from harvester.state.store import StateStore

    state_dir = tmp_path / "_state"
    register_secrets([ESCAPED_SECRET])
    try:
        exc = InvalidPayload(
            f"downloads: expected an integer, found '{ESCAPED_SECRET}'",
            payload={"downloads": ESCAPED_SECRET, ESCAPED_SECRET: [ESCAPED_SECRET, 1]},
        )
        exc.unit, exc.attempts = Unit("abc", date(2026, 3, 1), date(2026, 3, 1)), 1
        quarantine = Quarantine(state_dir / "quarantine" / "run-x.jsonl")
        quarantine.add(exc)
        report = RunReport("x", "job.yaml", str(tmp_path), str(state_dir / "state.sqlite"), "t")
        report.failed.append(FailedEntry.from_error(exc))
        report.message = f"stopped: {ESCAPED_SECRET}"
        write_report(report, state_dir)
        with StateStore(state_dir / "state.sqlite") as store:
            store.record_run(report_dict(report))
    finally:
        forget_secrets()
    forms = needles(ESCAPED_SECRET)
    forms[json.dumps(ESCAPED_SECRET, ensure_ascii=False)[1:-1].encode()] = "unescaped JSON form"
    scanner = Scanner([tmp_path], forms)
    scanner.scan()
    assert scanner.seen >= {"run-x.jsonl", "run-x.json", "last-run.json", "state.sqlite"}
    assert not scanner.leaks, sorted(scanner.leaks)
    entry = json.loads((state_dir / "quarantine" / "run-x.jsonl").read_text(encoding="utf-8"))
    assert entry["payload"] == {"downloads": "***", "***": ["***", 1]}
    written = json.loads((state_dir / "last-run.json").read_text(encoding="utf-8"))
    assert written["failed"][0]["reason"] == "downloads: expected an integer, found '***'"
