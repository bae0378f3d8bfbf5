"""Fetching: one signed request per unit, paced, retried, and run by a worker pool.

``client`` sends a request and turns its answer into a value or one of our errors;
``session`` is the paced aiohttp session; ``retry`` the one retry policy and circuit breaker;
``fetcher`` fetches one unit to the end; ``pool`` runs at most ``concurrency`` at once;
``lanes`` gives each account of a run its own budget, breaker, session and fetcher.
"""
