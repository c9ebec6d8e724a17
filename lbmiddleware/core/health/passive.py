"""Passive health: consecutive-failure ejection with growing ejection time, and probation.

The rules (Envoy outlier detection, gRPC A50, nginx ``max_fails``/``fail_timeout``):

* ``max_fails`` consecutive failures eject a backend; a success resets the count. A
  success is *stale* when its request was already in flight as the run of failures began
  (sent before the first failure was reported): it says nothing of the backend since, so
  it resets nothing. Otherwise the requests a dying backend is still finishing keep
  resetting the count (a draining backend refuses new connections while its old requests
  succeed) and delay its ejection.
* The k-th ejection in a row lasts ``fail_timeout * k``, capped at ``max_ejection_time``.
  k falls by one for every ``fail_timeout`` the backend then spends in rotation.
* When its time is up the backend returns on probation: its first failure ejects it again
  at once, its first success ends the probation (a request sent before it returned is
  stale here too).

Every ejection and return is logged once on the ``lbmiddleware`` logger. The lines are
queued in :attr:`PassiveHealth.log` and written by the balancer after it releases its lock,
so a slow log handler never holds up other threads' picks.
"""

from __future__ import annotations

import heapq
import logging
import math

from ..state import BackendState

__all__ = ["PassiveHealth"]


class PassiveHealth:
    """Applies the rules to BackendStates; keeps the ejected ones ordered by return time."""

    def __init__(self, max_fails: int, fail_timeout: float, max_ejection_time: float) -> None:
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.max_ejection_time = max_ejection_time
        self._ejected: list[tuple[float, int, BackendState]] = []   # heap by return time
        self._sequence = 0
        self.log: list[tuple[int, str, tuple]] = []   # (level, message, args) not yet written
        # k beyond this lasts no longer (the cap), so it only slows the decay back to 0.
        self._max_multiplier = max(1, math.ceil(max_ejection_time / fail_timeout))
        # Per backend: when its run of failures began (or it returned), and how many of
        # its requests were in flight then; successes of those are stale (see success()).
        self._since: dict[BackendState, list] = {}

    @property
    def any_ejected(self) -> bool:
        return bool(self._ejected)

    def success(self, state: BackendState, now: float, latency: float | None = None) -> None:
        """Record a success; ends probation.

        With ``latency`` (seconds since the request was sent), a success sent before the
        current run of failures began, or before the backend returned from ejection, is
        stale and changes nothing. At most as many successes are stale as requests were in
        flight at that moment, so a coarse clock cannot make a later request look old.
        """
        if latency is not None and (state.consecutive_failures or state.probation):
            mark = self._since.get(state)
            if mark is not None and mark[1] > 0 and now - latency < mark[0]:
                mark[1] -= 1
                return
        state.consecutive_failures = 0
        if state.probation and state.ejected_until is None:
            state.probation = False

    def failure(self, state: BackendState, now: float, latency: float | None = None) -> bool:
        """Record a failure; returns True when it ejects the backend.

        With ``latency`` (seconds since the request was sent), a failure of a request sent
        before the backend returned from ejection is stale on probation: it is counted but
        neither ejects the backend again nor grows its ejection time (a request that timed
        out while the backend was out says nothing of it since).
        """
        state.failures += 1
        if state.probation and latency is not None:
            mark = self._since.get(state)
            if mark is not None and mark[1] > 0 and now - latency < mark[0]:
                mark[1] -= 1
                return False
        if not state.consecutive_failures and not state.probation:
            self._since[state] = [now, state.in_flight]
        state.consecutive_failures += 1
        if state.ejected_until is not None or self.max_fails == 0:
            return False         # already out: late reports of older requests change nothing
        if state.probation or state.consecutive_failures >= self.max_fails:
            self._eject(state, now)
            return True
        return False

    def _eject(self, state: BackendState, now: float) -> None:
        in_rotation = now - state.in_rotation_since
        if state.multiplier and in_rotation > 0:
            state.multiplier = max(0, state.multiplier - int(in_rotation // self.fail_timeout))
        state.multiplier = min(state.multiplier + 1, self._max_multiplier)
        duration = min(self.fail_timeout * state.multiplier, self.max_ejection_time)
        reason = "failed on probation" if state.probation else (
            f"{state.consecutive_failures} consecutive failures")
        state.ejected_until = now + duration
        state.probation = False
        state.ejections += 1
        self._sequence += 1
        heapq.heappush(self._ejected, (state.ejected_until, self._sequence, state))
        self.log.append((logging.WARNING, "ejected backend %s for %.3gs: %s (ejection %d in a row)",
                         (state.backend.url, duration, reason, state.multiplier)))

    def expire(self, now: float) -> list[BackendState]:
        """Return to rotation (on probation) every backend whose ejection is over."""
        returned = []
        heap = self._ejected
        while heap and heap[0][0] <= now:
            until, _, state = heapq.heappop(heap)
            if state.ejected_until != until:
                continue             # stale entry (backend removed and re-added)
            state.ejected_until = None
            state.probation = True
            state.consecutive_failures = 0
            state.in_rotation_since = until
            self._since[state] = [until, state.in_flight]
            returned.append(state)
            self.log.append((logging.INFO, "backend %s returns on probation after %.3gs ejected",
                             (state.backend.url, min(self.fail_timeout * state.multiplier,
                                                     self.max_ejection_time))))
        return returned

    def restore_all(self, healthy: BackendState, now: float) -> list[BackendState]:
        """End every ejection early: ``healthy`` answered while every backend was ejected
        (panic), so the outage is over. It is healthy again; the others return on probation
        (a first failure ejects one again at once), without waiting for their time."""
        returned = [entry[2] for entry in self._ejected if entry[2].ejected_until == entry[0]]
        self._ejected = []
        for state in returned:
            state.ejected_until = None
            state.probation = state is not healthy
            state.consecutive_failures = 0
            state.in_rotation_since = now
            if state.probation:
                self._since[state] = [now, state.in_flight]
            else:
                self._since.pop(state, None)
        self.log.append((logging.INFO,
                         "backend %s answered while every backend was ejected: %d backends return",
                         (healthy.backend.url, len(returned))))
        return returned

    def forget(self, state: BackendState) -> None:
        """Drop a removed backend's ejection: if it is added again it starts healthy."""
        if state.ejected_until is not None:
            self._ejected = [entry for entry in self._ejected if entry[2] is not state]
            heapq.heapify(self._ejected)
        state.ejected_until = None
        state.probation = False
        state.consecutive_failures = 0
        self._since.pop(state, None)
