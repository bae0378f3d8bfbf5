"""``python -m harvester``: the same as the ``harvester`` command."""

import sys

from harvester.cli import main

sys.exit(main())
