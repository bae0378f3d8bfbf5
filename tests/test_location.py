"""Where an output lives: parsing ``output:``, the ``storage:`` block, the local cache key."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester.errors import JobError
from harvester.job.location import Location, StorageOptions, storage_env
from harvester.job.parse import load_job
from harvester.state.store import default_state_path


def test_a_path_stays_a_local_folder() -> None:
    assert Location.parse("out/stats") == Location.local("out/stats")
    assert Location.parse("out/stats").path == Path("out/stats")
    assert Location.parse("file:///srv/lake").path == Path("/srv/lake")
    assert str(Location.parse("out")) == "out"


@pytest.mark.parametrize(
    ("text", "bucket", "prefix", "shown"),
    [
        ("s3://lake/flip/stats", "lake", "flip/stats", "s3://lake/flip/stats"),
        ("s3://lake/", "lake", "", "s3://lake"),
        ("S3://lake//a//b/", "lake", "a/b", "s3://lake/a/b"),
        ("gs://bucket/p", "bucket", "p", "gs://bucket/p"),
    ],
)
def test_an_object_store_url(text: str, bucket: str, prefix: str, shown: str) -> None:
    location = Location.parse(text)
    assert (location.bucket, location.prefix, str(location)) == (bucket, prefix, shown)
    assert not location.is_local
    assert str(location / "page_stats") == f"{shown}/page_stats"
    with pytest.raises(ValueError, match="not a local folder"):
        _ = location.path


@pytest.mark.parametrize("text", ["ftp://host/x", "s3://", "s3:///prefix-only"])
def test_what_is_not_an_output(text: str) -> None:
    with pytest.raises(ValueError):
        Location.parse(text)


def test_the_endpoint_and_region_come_from_the_job_before_the_environment() -> None:
    env = {"AWS_ENDPOINT_URL": "http://env:9000", "AWS_DEFAULT_REGION": "eu-west-1"}
    plain = Location.parse("s3://b/p")
    assert storage_env(plain, env) == {"endpoint": "http://env:9000", "region": "eu-west-1"}
    s3_only = {**env, "AWS_ENDPOINT_URL_S3": "http://s3-only:9000", "AWS_REGION": "us-east-2"}
    assert storage_env(plain, s3_only) == {"endpoint": "http://s3-only:9000", "region": "us-east-2"}
    given = Location.parse("s3://b/p", StorageOptions("https://minio:9000", "auto"))
    assert storage_env(given, env) == {"endpoint": "https://minio:9000", "region": "auto"}


def test_the_state_of_an_s3_output_lives_in_the_user_cache_keyed_by_the_uri(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-in-a-path")
    one, other = Location.parse("s3://b/p"), Location.parse("s3://b/q")
    path = default_state_path(one)
    assert path.parent.parent == tmp_path / "harvester"
    assert path.name == "state.sqlite"
    assert default_state_path(other) != path
    assert default_state_path(Location.parse("s3://b/p/")) == path  # the same URI, spelt twice
    assert "never-in-a-path" not in str(path)
    assert default_state_path(Location.local("out")) == Path("out/_state/state.sqlite")


def _job(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text("start: 2026-01-01\ncollections: [abc]\n" + body)
    return path


def test_the_job_file_takes_s3_a_storage_block_and_a_format(tmp_path: Path) -> None:
    job = load_job(
        _job(
            tmp_path,
            "output: s3://lake/flip\nformat: delta\n"
            "storage: {endpoint: 'http://127.0.0.1:9000', region: us-east-1}\n",
        )
    )
    assert str(job.output) == "s3://lake/flip"
    assert job.output.storage == StorageOptions("http://127.0.0.1:9000", "us-east-1")
    assert job.format == "delta"
    assert load_job(_job(tmp_path, "output: out\n")).format == "parquet"
    assert not job.output.storage.allow_unfenced
    unfenced = load_job(_job(tmp_path, "output: s3://lake/flip\nstorage: {allow_unfenced: true}\n"))
    assert unfenced.output.storage == StorageOptions(allow_unfenced=True)


def test_bad_storage_settings_are_refused_with_their_field(tmp_path: Path) -> None:
    with pytest.raises(JobError) as caught:
        load_job(
            _job(
                tmp_path,
                "output: ftp://x/y\nformat: orc\n"
                "storage: {endpoint: minio:9000, zone: a, allow_unfenced: 'yes'}\n",
            )
        )
    fields = {p.field for p in caught.value.problems}
    assert {"output", "format", "storage.endpoint", "storage.allow_unfenced"} <= fields
    assert any("zone" in p.field or "zone" in p.message for p in caught.value.problems)
