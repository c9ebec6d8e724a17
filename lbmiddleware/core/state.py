"""Per-backend live state, owned by one Balancer and changed only under its lock."""

from __future__ import annotations

from collections import deque

from .backend import Backend

__all__ = ["BackendState", "Members"]


class BackendState:
    """What the balancer knows of one backend right now (counters, health, latency)."""

    __slots__ = (
        "backend", "weight", "in_flight", "requests", "failures", "consecutive_failures",
        "ejections", "ejected_until", "probation", "multiplier", "in_rotation_since",
        "rtt", "rtt_stamp", "load_version", "turn", "sent",
    )

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.weight = backend.weight
        self.in_flight = 0
        self.requests = 0            # attempts ended by report() with an outcome
        self.failures = 0
        self.consecutive_failures = 0
        self.ejections = 0           # ejections ever
        self.ejected_until: float | None = None
        self.probation = False
        self.multiplier = 0          # k: ejections in a row, decays while in rotation
        self.in_rotation_since = 0.0
        self.rtt: float | None = None   # peak-EWMA estimate (seconds) at rtt_stamp
        self.rtt_stamp = 0.0
        self.load_version = 0        # bumped on each in-flight change (least_conn's heap)
        self.turn = 0.0              # virtual time of its next turn among ties (least_conn)
        self.sent: deque[float] | None = None   # send times in flight, oldest first (latency)

    def __repr__(self) -> str:
        return f"<BackendState {self.backend.url} in_flight={self.in_flight}>"


class Members:
    """An immutable snapshot of the backends a policy may choose from, in listed order.

    ``generation`` changes whenever the set changes, so a policy can cache what it derives
    from a snapshot (a weight table, a schedule) and rebuild only when it must.
    """

    __slots__ = ("states", "set", "generation", "total_weight")

    def __init__(self, states: tuple[BackendState, ...], generation: int) -> None:
        self.states = states
        self.set = frozenset(states)     # BackendState hashes by identity
        self.generation = generation
        self.total_weight = sum(s.weight for s in states)

    def __contains__(self, state: BackendState) -> bool:
        return state in self.set

    def __len__(self) -> int:
        return len(self.states)
