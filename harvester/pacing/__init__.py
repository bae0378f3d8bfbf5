"""Pacing: never more calls than every rate window of a key allows, whoever spends it.

``protocol`` is what the paced session talks to (a :class:`~harvester.pacing.protocol.Pacer`
and its tickets); ``limiter`` is the in-process sliding-window limiter; ``shared`` puts a store
behind the same protocol so that every process on a key shares one budget, on one host
(``file_store``, SQLite) or many (``redis_store``).
"""
