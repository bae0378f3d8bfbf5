"""The public surface stays what we mean it to be."""

from __future__ import annotations

import harvester


def test_public_surface() -> None:
    assert sorted(harvester.__all__) == sorted(
        [
            "EXIT_CODES",
            "HarvesterError",
            "JobError",
            "RunOptions",
            "RunReport",
            "UnitsFailed",
            "__version__",
            "harvest",
            "harvest_async",
            "load_job",
            "read_dataset",
        ]
    )
    for name in harvester.__all__:
        assert getattr(harvester, name) is not None


def test_exit_codes_are_documented() -> None:
    assert set(harvester.EXIT_CODES) == {0, 1, 2, 3, 4, 70, 74, 130, 141, 143}
