"""A Flipsnack-compatible API simulator: the demo's data source and the end-to-end tests' server.

Exact (:func:`expected_stats` is what the server answers), deterministic (a seed fixes the
figures, the latency draws and the injected faults) and controllable (``reconfigure``,
counters, and the ``/_sim/`` admin endpoints of a running server).
"""

from harvester.simulator.config import FAULT_KINDS, SimulatorConfig, config_from_mapping
from harvester.simulator.data import day_stats, expected_stats, pages_of
from harvester.simulator.runner import SimulatorProcess, SimulatorThread, serve
from harvester.simulator.server import Simulator

__all__ = [
    "FAULT_KINDS",
    "Simulator",
    "SimulatorConfig",
    "SimulatorProcess",
    "SimulatorThread",
    "config_from_mapping",
    "day_stats",
    "expected_stats",
    "pages_of",
    "serve",
]
