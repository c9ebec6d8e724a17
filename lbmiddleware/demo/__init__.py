"""``python -m lbmiddleware demo``: every policy against local backends with faults."""

from .runner import main, run_demo

__all__ = ["main", "run_demo"]
