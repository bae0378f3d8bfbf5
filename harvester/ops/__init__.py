"""Operations: read-only views of an output and its upkeep, for the CLI and orchestrators.

``status``, ``estimate`` (``harvester plan``), ``summary`` and ``chart``, ``runs``,
``metrics``, ``verify``, ``maintain`` and ``validate``; ``display`` prints their tables.
"""
