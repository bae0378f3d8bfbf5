"""The output's record names the API it was filled from: demo and real rows never mix, and a
run against another endpoint is refused (exit 2) unless it is told the API moved."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from harvester.job.parse import load_job
from harvester.lake.output import read_meta
from harvester.simulator import SimulatorConfig, SimulatorThread
from tests.conftest import job_dict, run_cli

CONFIGS = Path(__file__).parent.parent / "configs"


def _job(tmp_path: Path, base_url: str, output: Path, name: str, **overrides: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job_dict(base_url, output, **overrides)))
    return path


def test_the_record_names_the_canonical_endpoint_and_the_accounts(
    tmp_path: Path, simulator: SimulatorThread, output_dir: Path, env: dict[str, str]
) -> None:
    host, port = simulator.base_url.removeprefix("http://").rstrip("/").split(":")
    # Another spelling of the same API: upper-case scheme, no trailing slash.
    spelled = f"HTTP://{host}:{port}"
    done = run_cli("run", str(_job(tmp_path, spelled, output_dir, "a")), env=env)
    assert done.returncode == 0, done.stderr
    meta = read_meta(output_dir)
    assert meta is not None
    assert meta.endpoints == (f"http://{host}:{port}/",) and meta.accounts == ("default",)
    # The record is plain JSON, for any reader.
    record = json.loads((output_dir / "_harvester" / "output.json").read_text())
    assert record["endpoints"] == [f"http://{host}:{port}/"]
    again = run_cli("run", str(_job(tmp_path, simulator.base_url, output_dir, "b")), env=env)
    assert again.returncode == 0 and "nothing to do" in again.stderr  # the same API: passes


def test_another_endpoint_is_refused_naming_both_unless_allowed(
    tmp_path: Path,
    simulator: SimulatorThread,
    sim_config: SimulatorConfig,
    output_dir: Path,
    env: dict[str, str],
) -> None:
    first = run_cli("run", str(_job(tmp_path, simulator.base_url, output_dir, "a")), env=env)
    assert first.returncode == 0, first.stderr
    before = sorted(p.relative_to(output_dir) for p in output_dir.rglob("*") if p.is_file())
    with SimulatorThread(sim_config) as other:
        path = _job(tmp_path, other.base_url, output_dir, "b", start="2026-02-20")
        refused = run_cli("run", str(path), env=env)
        assert refused.returncode == 2, refused.stderr
        assert simulator.base_url in refused.stderr and other.base_url in refused.stderr
        assert "--allow-other-endpoint" in refused.stderr
        assert other.counters()["requests"] == 0
        after = sorted(p.relative_to(output_dir) for p in output_dir.rglob("*") if p.is_file())
        assert after == before  # nothing written, not even a report
        allowed = run_cli("run", str(path), "--allow-other-endpoint", env=env)
        assert allowed.returncode == 0, allowed.stderr
        assert other.counters()["requests"] > 0
    meta = read_meta(output_dir)
    assert meta is not None and set(meta.endpoints) == {simulator.base_url, other.base_url}


def test_the_demo_writes_to_its_own_folder_and_records_the_simulator(
    tmp_path: Path, env: dict[str, str]
) -> None:
    demo = load_job(CONFIGS / "demo.yaml")
    plain = {k: v for k, v in os.environ.items() if not k.startswith("FLIPSNACK_")}
    # The demo's own job, narrowed to one collection and one day so that it is quick.
    data = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    data.update(start="2026-01-01", end="2026-01-01", collections=["d3m0h45h"])
    small = tmp_path / "demo.yaml"
    small.write_text(yaml.safe_dump(data))
    done = run_cli("run", str(small), env=plain, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(demo.output) == "output/demo"
    meta = read_meta(tmp_path / "output" / "demo")
    assert meta is not None and meta.endpoints == ("simulator",)
    # The real API's example job, pointed at the demo's folder, is refused before any call.
    example = yaml.safe_load((CONFIGS / "example.yaml").read_text())
    example.update(output=str(tmp_path / "output" / "demo"))
    real = tmp_path / "real.yaml"
    real.write_text(yaml.safe_dump(example))
    refused = run_cli("run", str(real), env=env, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "holds data from simulator" in refused.stderr
    assert "https://api.flipsnack.com/v1/ (account default)" in refused.stderr
