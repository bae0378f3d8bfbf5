"""The benchmark suite (``make bench``; ``make bench-long``): one table of ratios and goals.

One module per figure: :mod:`budget` (rate-limit budget use), :mod:`overhead` (client overhead
over a bare aiohttp loop), :mod:`memory` (peak RSS against unit count), :mod:`planning` (a
million-unit dry run), :mod:`files` (Parquet files per partition), :mod:`baseline` (against a
naive sequential script). :mod:`common` holds the table row, the recording simulator and the
child-process runner. Not collected by pytest; ``tests/test_budget.py`` is the fast guard.
"""
