"""A run: the stages wired together, and what it reports.

``options`` are a run's settings beyond the job file; ``pipeline`` wires plan, lanes, pool,
commit and report; ``commit`` turns fetched answers into committed partitions; ``report`` is
the run's report; ``progress`` what an operator sees while it runs.
"""
