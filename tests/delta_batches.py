"""``python -m tests.delta_batches N ARGS...``: the harvester CLI with Delta commits of at most N
partitions and no time limit, so a short test job makes many batches (a real process to kill)."""

from __future__ import annotations

import sys

from harvester.cli import main
from harvester.lake.delta import DeltaSink

if __name__ == "__main__":
    DeltaSink.batch_partitions = int(sys.argv[1])
    DeltaSink.batch_seconds = 3600.0
    sys.exit(main(sys.argv[2:]))
