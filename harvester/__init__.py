"""harvester: an async batch statistics harvester for the Flipsnack API.

The library surface is small: load a job, harvest it, read what it wrote. The pipeline is
imported on first use, so the job's parser or the simulator load without aiohttp's client.
"""

from typing import TYPE_CHECKING, Any

from harvester.errors import EXIT_CODES, HarvesterError, JobError, UnitsFailed

if TYPE_CHECKING:
    from harvester.job.parse import load_job
    from harvester.lake.dataset import read_dataset
    from harvester.run.options import RunOptions
    from harvester.run.pipeline import harvest, harvest_async
    from harvester.run.report import RunReport

__version__ = "0.1.0"

__all__ = [
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

_LAZY = {
    "RunOptions": "harvester.run.options",
    "RunReport": "harvester.run.report",
    "harvest": "harvester.run.pipeline",
    "harvest_async": "harvester.run.pipeline",
    "load_job": "harvester.job.parse",
    "read_dataset": "harvester.lake.dataset",
}


def __getattr__(name: str) -> Any:
    """Import the heavier parts of the public surface when first asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harvester' has no attribute {name!r}")
