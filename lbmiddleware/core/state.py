"""Per-backend live state, owned by one Balancer and changed only under its lock.

Each group of fields has one writer:

* the counters (``in_flight``, ``requests``, ``failures``, ``bytes_sent``,
  ``bytes_received``, the latency histogram ``latency_counts``/``latency_sum``, the answered
  latency ``answered``, the batch ``answers``/``batch_from``/``fold_at``), ``changed_at``
  and ``backend``/``weight``: the balancer;
* ``health``, a :class:`~lbmiddleware.core.health.passive.HealthRecord`: passive health;
* ``active``, a :class:`~lbmiddleware.core.health.active.ActiveRecord` (None while active
  health checks are off): active health;
* ``ramp_since``/``ramp`` (slow start), ``drain_until``, ``source``, ``former`` and
  ``tabled``: the balancer;
* ``latency``, a :class:`~lbmiddleware.core.load.LatencyEstimate`: the peak-EWMA estimator;
* ``scratch``: the pool's policy, for what it keeps per backend (least_conn: the backend's
  live heap entry; latency: the send times of its requests in flight).

The groups are objects of their own, but the counters the policies read on every pick stay
on the state itself, one attribute away.
"""

from __future__ import annotations

from typing import Any

from .backend import Backend
from .health.active import ActiveRecord
from .health.passive import HealthRecord
from .load import LATENCY_BUCKETS, AnsweredLatency, LatencyEstimate

__all__ = ["BackendState", "Members"]


class BackendState:
    """What the balancer knows of one backend right now."""

    __slots__ = ("backend", "weight", "in_flight", "requests", "failures", "health", "latency",
                 "scratch", "active", "ramp_since", "ramp", "drain_until", "source", "former",
                 "tabled", "bytes_sent", "bytes_received", "latency_counts", "latency_sum",
                 "answered", "answers", "batch_from", "fold_at", "changed_at")

    def __init__(self, backend: Backend, now: float) -> None:
        self.backend = backend
        # What the policies weigh: the backend's weight, or during a slow start its effective
        # weight in hundredths (every member's, so that they stay whole numbers).
        self.weight = backend.weight
        self.in_flight = 0
        self.requests = 0            # attempts ended by report() with an outcome
        self.failures = 0            # of those, the failed ones (while draining too)
        self.health = HealthRecord(now)
        self.latency = LatencyEstimate()
        self.scratch: Any = None
        self.active: ActiveRecord | None = None
        self.ramp_since: float | None = None     # slow start began (None: full weight)
        self.ramp = 1.0                          # its factor as last computed
        self.drain_until: float | None = None    # draining: leaves by then at the latest
        self.source: str | None = None           # the entry that lists it (None: static)
        # The Backend objects picks returned before ``backend`` replaced them (a new weight)
        # while requests picked with them were in flight: their ends are this backend's.
        self.former: tuple[Backend, ...] = ()
        self.tabled = False                      # in the policy's table (ip_hash) once
        # What stats() shows operators (attempts ended with an outcome): body bytes, and the
        # latencies of the answered attempts (time to the response head), per LATENCY_BUCKETS
        # bound plus one above them (not cumulative).
        self.bytes_sent = 0
        self.bytes_received = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.answered = AnsweredLatency()        # mean latency of the attempts answered
        # Answered latencies not yet in the histogram, the sum or the mean, taken since
        # ``batch_from``: counted at the first report from ``fold_at`` on, or when stats()
        # reads them (see balancer._fold()).
        self.answers: list[float] = []
        self.batch_from = now
        self.fold_at = now
        # Timer reading of its last change of state (joined, ejected, returned, probation
        # passed, down, up, drain started, slow start started or ended).
        self.changed_at = now

    def __repr__(self) -> str:
        return f"<BackendState {self.backend.url} in_flight={self.in_flight}>"


class Members:
    """An immutable snapshot of the backends a policy may choose from, in listed order.

    ``generation`` changes whenever the set changes, so a policy can cache what it derives
    from a snapshot (a weight table, a schedule) and rebuild only when it must. ``carry``
    says the set is the previous one with only weights changed (a slow start's step): a
    rotation may go on where it was instead of starting again.
    """

    __slots__ = ("states", "set", "generation", "total_weight", "carry")

    def __init__(self, states: tuple[BackendState, ...], generation: int,
                 carry: bool = False) -> None:
        self.states = states
        self.carry = carry
        self.set = frozenset(states)     # BackendState hashes by identity
        self.generation = generation
        self.total_weight = sum(s.weight for s in states)

    def __contains__(self, state: BackendState) -> bool:
        return state in self.set

    def __len__(self) -> int:
        return len(self.states)
