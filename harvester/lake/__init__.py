"""The lake: what the harvester writes where readers read it.

``schema`` is the datasets' shape; ``parquet`` and ``delta`` are the two writers behind one
interface; ``objects`` is every write into an output, made over the version it was read at;
``fs`` reaches an output's filesystem (local or object storage); ``output`` is the output's own
record (what it holds, the collections each account listed); ``lock`` and ``objlock`` keep one
writer per output, ``holder`` says whether a lock's holder is alive.
"""
