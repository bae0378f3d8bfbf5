"""The state: what is staged, done, failed or gone, and how it is kept true to the lake.

``store`` is the SQLite state and its staging area; ``record`` rebuilds and checks what is done
from the dataset itself (the lake is the record, the state a cache of it); ``binding`` ties a
state to the one output it describes.
"""
