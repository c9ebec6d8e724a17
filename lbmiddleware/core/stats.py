"""What ``Balancer.stats()`` shows of one backend: its row, plain values read at one moment.

The balancer decides and counts; this only reads what it counts into the row that
``stats()`` documents (the status page, the metrics and the snapshot read these rows). The
balancer calls it holding its lock (or on its owner's thread), its latency batch folded.
Standard library only.
"""

from __future__ import annotations

import itertools
from typing import Any

from .health.active import ActiveHealth
from .load import PeakEwma
from .state import BackendState

__all__ = ["backend_row", "status"]


def status(state: BackendState) -> str:
    """``state``'s word: draining, ejected, down (by its active checks, or not passed one
    yet), slow_start, probation or healthy, the first that holds."""
    record = state.active
    if state.drain_until is not None:
        return "draining"
    if state.health.ejected_until is not None:
        return "ejected"
    if record is not None and not record.up:
        return "down"
    if state.ramp_since is not None:
        return "slow_start"
    if state.health.probation:
        return "probation"
    return "healthy"


def backend_row(state: BackendState, now: float, active: ActiveHealth | None,
                load: PeakEwma) -> dict[str, Any]:
    """The row of ``state`` at ``now`` (the pool's timer): the fields
    :meth:`Balancer.stats <lbmiddleware.core.balancer.Balancer.stats>` lists. ``active``:
    the pool's active health (None while checks are off); ``load``: its latency estimator."""
    health = state.health
    record = state.active
    ejected_until = health.ejected_until
    drain_until = state.drain_until
    ramping = state.ramp_since is not None
    estimate = state.latency
    backend = state.backend
    counts = state.latency_counts
    cumulative = list(itertools.accumulate(counts[:-1]))
    return {
        "url": backend.url,
        "weight": backend.weight,
        "priority": backend.priority,
        "effective_weight": (round(backend.weight * state.ramp, 3) if ramping
                             else backend.weight),
        "source": state.source,
        "state": status(state),
        "state_age": max(0.0, now - state.changed_at),
        "ejected_until": ejected_until,
        "ejection_left": None if ejected_until is None else max(0.0, ejected_until - now),
        "drain_left": None if drain_until is None else max(0.0, drain_until - now),
        "ramp": state.ramp if ramping else None,
        "in_flight": state.in_flight,
        "requests": state.requests,
        "failures": state.failures,
        "consecutive_failures": health.consecutive_failures,
        "ejections": health.ejections,
        "bytes_sent": state.bytes_sent,
        "bytes_received": state.bytes_received,
        "latency": state.answered.mean,
        "latency_estimate": load.estimate(estimate, now) if estimate.rtt is not None else None,
        "latency_sum": state.latency_sum,
        "latency_count": cumulative[-1] + counts[-1],
        "latency_buckets": cumulative,
        "health_check": (active.row(record, now) if active is not None and record is not None
                         else None),
    }
