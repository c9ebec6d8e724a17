"""Which process answers: the gateway's ``serve --workers N`` (``LB_WORKERS``) runs N worker
processes on one address, and each keeps its own pools -- health, latency, counters, history.
What the status page, ``/status.json`` and ``/metrics`` show is the state of the worker that
answered, so they say which one it is (:func:`worker_row`); a process that is not one of
several workers (an app embedding the middleware, a gateway with one worker) says nothing.

Set once in each worker, after the fork (:func:`set_worker`); read on every page.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["Worker", "set_worker", "current_worker", "worker_row"]


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place among the gateway's workers: ``index`` from 1 to ``count``."""

    index: int
    count: int


_current: Worker | None = None


def set_worker(index: int, count: int) -> None:
    """This process is worker ``index`` (1 to ``count``) of the gateway's ``count``."""
    global _current
    if not 1 <= index <= count:
        raise ValueError(f"worker index {index!r} is not between 1 and {count!r}")
    _current = Worker(index, count)


def current_worker() -> Worker | None:
    """This process's :class:`Worker`, None when it is not one of several."""
    return _current


def worker_row() -> dict[str, Any] | None:
    """``/status.json``'s ``worker``: ``{"index", "count", "pid"}``, or None."""
    worker = _current
    if worker is None:
        return None
    return {"index": worker.index, "count": worker.count, "pid": os.getpid()}
