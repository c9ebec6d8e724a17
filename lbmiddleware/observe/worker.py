"""Which process this is among the gateway's workers: ``serve --workers N`` (``LB_WORKERS``)
runs N worker processes on one address, and each keeps its own pools -- health, latency,
counters, history. Any worker may answer the admin port.

The status page and ``/status.json`` show the state of the worker that answered, and say which
one it is (:func:`worker_row`); the metrics carry the label ``worker`` (:mod:`.metrics`), and
``/metrics`` holds every worker's (:mod:`.peers`).

A process that is not one of several workers (an app embedding the middleware, a gateway with
one worker) has no :class:`Worker`: nothing is added anywhere. Set once in each worker, after
the fork (:func:`set_worker`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["Worker", "set_worker", "current_worker", "worker_row"]


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place among the gateway's workers: ``index`` from 1 to ``count``;
    ``peers``: each worker's private metrics address, in index order (empty: none)."""

    index: int
    count: int
    peers: tuple[tuple[str, int], ...] = ()


_current: Worker | None = None


def set_worker(index: int, count: int,
               peers: Sequence[tuple[str, int]] = ()) -> None:
    """This process is worker ``index`` (1 to ``count``) of the gateway's ``count``;
    ``peers``: every worker's metrics address (:func:`.peers.serve_peers`), this one's
    included."""
    global _current
    if not 1 <= index <= count:
        raise ValueError(f"worker index {index!r} is not between 1 and {count!r}")
    if peers and len(peers) != count:
        raise ValueError(f"{len(peers)} peer addresses for {count} workers")
    _current = Worker(index, count, tuple(peers))


def current_worker() -> Worker | None:
    """This process's :class:`Worker`, None when it is not one of several."""
    return _current


def worker_row() -> dict[str, Any] | None:
    """``/status.json``'s ``worker``: ``{"index", "count", "pid"}``, or None."""
    worker = _current
    if worker is None:
        return None
    return {"index": worker.index, "count": worker.count, "pid": os.getpid()}

