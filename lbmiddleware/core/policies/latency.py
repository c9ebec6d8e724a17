"""``latency``: power of two choices on peak-EWMA cost (Finagle, Linkerd, tower)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from math import exp, inf

from ..load import UsualInFlight
from ..state import BackendState, Members
from .base import Exclude, Policy

__all__ = ["PeakEwmaP2C"]

#: Seconds between two rises of a backend's usual in-flight count (its falls are at once):
#: against USUAL_TAU's 30 s a rise per millisecond is as good as one per pick, and most
#: picks of a busy backend then only compare.
_RISE_STEP = 0.001


class _Track(UsualInFlight):
    """What the policy keeps per backend (its ``scratch``): its usual in-flight count (the
    base class), the send times of its requests in flight, oldest first, and whether it
    started over after an outage."""

    __slots__ = ("sent", "returned")

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.sent: deque[float] = deque()
        self.returned = False


class PeakEwmaP2C(Policy):
    """Latency-aware: power of two choices on peak-EWMA cost (Finagle, Linkerd, tower).

    Draw two distinct eligible backends at random and keep the one with the lower
    ``rtt_estimate * (in_flight + share + 1) / weight`` (see
    :mod:`lbmiddleware.core.load`), where ``share`` is the backend's weighted part of the
    requests the pool keeps in flight as a rule (the sum of the backends' low-water marks,
    :class:`~lbmiddleware.core.load.UsualInFlight`, kept as a running sum): with many
    requests per backend, a slow backend is not made cheap by the few it holds. O(1).

    A request still outstanding after ``age`` seconds will take at least ``age``: the age
    of the oldest outstanding request is a lower bound on a latency sample not yet
    reported, so the estimate used is never below it. A backend that turns slow (or stops
    answering) then looks slow while its first slow requests are still in flight, not
    only when they end. The send times are kept per backend in order (in its ``scratch``);
    each ended request drops the oldest, so with responses out of order the head is
    younger than the true oldest request and the bound stays a lower bound.

    A backend whose state changed after its latest sample (it came back from an ejection,
    or up after failed health checks) starts over, without an estimate: its estimate
    remembers the outage (failures count as slow samples), and what decides about it now
    is its probation or its passed checks. Otherwise it was shunned until that memory
    decayed, long after it recovered (balance benchmark, scenario 10: 3.3% of the attempts
    in the slow-start window, where Envoy's formula gives 5.2%). Until it answers it takes
    one request at a time, as probation means: a newcomer's default estimate x its few
    requests is cheap beside a busy pool, and a black-holed backend back on probation drew
    a burst of them (scenario 5: 52-58 requests lost instead of 21-22).
    """

    name = "latency"
    needs_time = True

    _generation = -1
    _usual = 0.0            # the sum of the members' marks (running; redone per generation)
    _weights = 1            # the sum of the members' weights

    def started(self, state: BackendState, now: float | None = None) -> None:
        if now is None:
            now = self.timer()
        track: _Track | None = state.scratch
        if track is None:
            track = state.scratch = _Track(now)
        count = state.in_flight - 1
        if count < track.level or now - track.stamp >= _RISE_STEP:
            self._usual += track.held(count, now)
        track.sent.append(now)

    def finished(self, state: BackendState) -> None:
        track: _Track | None = state.scratch
        if track is not None and track.sent:
            track.sent.popleft()

    def _cost(self, state: BackendState, now: float, usual: float) -> float:
        # load.cost(state.latency, in_flight, weight, now, share), inlined: twice per pick
        in_flight = state.in_flight
        latency = state.latency
        rtt = latency.rtt
        if rtt is None:
            if not in_flight:
                return 0.0
            rtt = self.load.default_rtt
        else:
            elapsed = now - latency.stamp
            if elapsed > 0.0:
                rtt *= exp(-elapsed / self.load.tau)
        weight = state.weight
        share = usual * weight
        cost = rtt * (in_flight + share + 1) / weight
        track: _Track | None = state.scratch
        if track is not None and track.sent:
            if track.returned and state.latency.rtt is None:
                return inf        # back after an outage: one request until it answers
            floor = (now - track.sent[0]) * (in_flight + share + 1) / weight
            if floor > cost:
                return floor
        return cost

    def _changed(self, members: Members) -> None:
        """The eligible set changed: a backend whose state changed after its latest sample
        (it came back) starts over, and the sums are counted again."""
        forget = self.load.forget
        carry = members.carry          # only weights changed: nobody came back
        usual = 0.0
        for state in members.states:
            latency = state.latency
            track: _Track | None = state.scratch
            if not carry and latency.rtt is not None and state.changed_at > latency.stamp:
                forget(latency)
                if track is None:
                    track = state.scratch = _Track(state.changed_at)
                track.returned = True
            if track is not None:
                usual += track.level
        self._generation = members.generation
        self._weights = members.total_weight or 1
        self._usual = usual

    def pick(self, members: Members, key: str | None, exclude: Exclude,
             now: float | None = None) -> BackendState:
        if members.generation != self._generation:
            self._changed(members)
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
        if now is None:
            now = self.timer()
        usual = self._usual / self._weights
        cost = self._cost
        return a if cost(a, now, usual) <= cost(b, now, usual) else b
