"""``latency``: power of two choices on peak-EWMA cost (Finagle, Linkerd, tower)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ..state import BackendState, Members
from .base import Exclude, Policy

__all__ = ["PeakEwmaP2C"]


class PeakEwmaP2C(Policy):
    """Latency-aware: power of two choices on peak-EWMA cost (Finagle, Linkerd, tower).

    Draw two distinct eligible backends at random and keep the one with the lower
    ``rtt_estimate * (in_flight + 1) / weight`` (see :mod:`lbmiddleware.core.load`). O(1).

    A request still outstanding after ``age`` seconds will take at least ``age``: the age
    of the oldest outstanding request is a lower bound on a latency sample not yet
    reported, so the estimate used is never below it. A backend that turns slow (or stops
    answering) then looks slow while its first slow requests are still in flight, not
    only when they end. The send times are kept per backend in order (in its ``scratch``);
    each ended request drops the oldest, so with responses out of order the head is
    younger than the true oldest request and the bound stays a lower bound.
    """

    name = "latency"

    def started(self, state: BackendState) -> None:
        sent: deque[float] | None = state.scratch
        if sent is None:
            sent = state.scratch = deque()
        sent.append(self.timer())

    def finished(self, state: BackendState) -> None:
        sent: deque[float] | None = state.scratch
        if sent:
            sent.popleft()

    def _cost(self, state: BackendState, now: float) -> float:
        cost = self.load.cost(state.latency, state.in_flight, state.weight, now)
        sent: deque[float] | None = state.scratch
        if sent:
            floor = (now - sent[0]) * (state.in_flight + 1) / state.weight
            if floor > cost:
                return floor
        return cost

    def pick(self, members: Members, key: str | None, exclude: Exclude) -> BackendState:
        states: Sequence[BackendState] = members.states
        count = len(states)
        if exclude:
            candidates = [s for s in states if s not in exclude]
            if len(candidates) < count:
                states, count = candidates, len(candidates)
        if count == 1:
            return states[0]
        random_ = self.rng.random
        first = int(random_() * count)
        second = int(random_() * (count - 1))
        if second >= first:
            second += 1
        a, b = states[first], states[second]
        now = self.timer()
        cost = self._cost
        return a if cost(a, now) <= cost(b, now) else b
