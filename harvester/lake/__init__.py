"""The lake: what the harvester writes where readers read it.

``schema`` is the datasets' shape; ``parquet``, ``delta`` and ``iceberg`` are the writers
behind one interface (``catalog``: an Iceberg output's catalog; ``partfiles``: scanning part
files, telling a damaged one; ``delta_log``: naming a broken log entry); ``dataset`` is what a
reader should see (``read_dataset`` by format); ``objects`` is every write into an output, made
over the version it was read at; ``fs`` reaches an output's filesystem (local or object
storage); ``output`` is the output's own record (what it holds, the collections each account
listed); ``lock`` and ``objlock`` keep one writer per output, ``holder`` says whether a lock's
holder is alive.
"""
