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
* Panic (every backend ejected): the first success ends every ejection at once; the backend
  that answered is healthy, the others return on probation.

Each backend's :class:`HealthRecord` is written only here. Every ejection and return is an
event (:mod:`lbmiddleware.core.events`) passed to ``emit``; the balancer queues them under its
lock and delivers them after releasing it, so a slow listener never holds up a pick.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Protocol

from ..backend import Backend
from ..events import BackendEjected, BackendReturned, Event, ProbationPassed, ReturnCause

__all__ = ["PassiveHealth", "HealthRecord", "Member"]


class HealthRecord:
    """One backend's passive health."""

    __slots__ = (
        "consecutive_failures", "ejections", "ejected_until", "ejection_time", "probation",
        "multiplier", "in_rotation_since", "stale_before", "stale_left", "steady",
    )

    def __init__(self, now: float) -> None:
        self.consecutive_failures = 0
        self.ejections = 0               # ejections ever
        self.ejected_until: float | None = None
        self.ejection_time = 0.0         # seconds: the current (or last) ejection's length
        self.probation = False
        self.multiplier = 0              # k: ejections in a row, decays while in rotation
        self.in_rotation_since = now
        # When its run of failures began (or it returned), and how many of its requests
        # were in flight then: outcomes of those are stale (see PassiveHealth.success()).
        self.stale_before = 0.0
        self.stale_left = 0
        # In rotation, no failure counted, not on probation: a success changes nothing, so
        # the balancer need not call success() (one attribute on the hot path).
        self.steady = True



def _settle(record: HealthRecord) -> None:
    record.steady = (record.ejected_until is None and not record.consecutive_failures
                     and not record.probation)


class Member(Protocol):
    """What passive health reads of a backend's state (it writes only ``health``)."""

    @property
    def backend(self) -> Backend: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def health(self) -> HealthRecord: ...


class PassiveHealth:
    """Applies the rules to HealthRecords; keeps the ejected ones ordered by return time."""

    def __init__(self, max_fails: int, fail_timeout: float, max_ejection_time: float,
                 emit: Callable[[Event], None]) -> None:
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.max_ejection_time = max_ejection_time
        self._emit = emit
        self._ejected: list[tuple[float, int, Member]] = []   # heap by return time
        self._sequence = 0
        # k beyond this lasts no longer (the cap), so it only slows the decay back to 0.
        self._max_multiplier = max(1, math.ceil(max_ejection_time / fail_timeout))

    @property
    def any_ejected(self) -> bool:
        return bool(self._ejected)

    def due(self, now: float) -> bool:
        """True when some ejection is over by ``now`` (:meth:`expire` would return it)."""
        heap = self._ejected
        return bool(heap) and heap[0][0] <= now

    def success(self, member: Member, now: float, latency: float | None = None,
                panic: bool = False) -> tuple[Backend, ...] | None:
        """Record a success; ends probation. Returns the backends back in rotation when the
        success ended a full outage (``panic``: every backend ejected), else None.

        With ``latency`` (seconds since the request was sent), a success sent before the
        current run of failures began, or before the backend returned from ejection, is
        stale and changes nothing. At most as many successes are stale as requests were in
        flight at that moment, so a coarse clock cannot make a later request look old.
        """
        record = member.health
        if record.ejected_until is not None and panic:
            return self._restore_all(member, now)        # the full outage is over
        if not (record.consecutive_failures or record.probation):
            return None
        if latency is not None and record.stale_left > 0 and now - latency < record.stale_before:
            record.stale_left -= 1
            return None
        record.consecutive_failures = 0
        if record.probation and record.ejected_until is None:
            record.probation = False
            self._emit(ProbationPassed(member.backend))
        _settle(record)
        return None

    def failure(self, member: Member, now: float, latency: float | None = None) -> bool:
        """Record a failure; returns True when it ejects the backend.

        With ``latency`` (seconds since the request was sent), a failure of a request sent
        before the backend returned from ejection is stale on probation: it neither ejects
        the backend again nor grows its ejection time (a request that timed out while the
        backend was out says nothing of it since).
        """
        record = member.health
        if record.probation and latency is not None:
            if record.stale_left > 0 and now - latency < record.stale_before:
                record.stale_left -= 1
                return False
        if not record.consecutive_failures and not record.probation:
            record.stale_before, record.stale_left = now, member.in_flight
        record.consecutive_failures += 1
        record.steady = False
        if record.ejected_until is not None or self.max_fails == 0:
            return False         # already out: late reports of older requests change nothing
        if record.probation or record.consecutive_failures >= self.max_fails:
            self._eject(member, now)
            return True
        return False

    def _eject(self, member: Member, now: float) -> None:
        record = member.health
        in_rotation = now - record.in_rotation_since
        if record.multiplier and in_rotation > 0:
            record.multiplier = max(0, record.multiplier - int(in_rotation // self.fail_timeout))
        record.multiplier = min(record.multiplier + 1, self._max_multiplier)
        duration = min(self.fail_timeout * record.multiplier, self.max_ejection_time)
        on_probation = record.probation
        record.ejected_until = until = now + duration
        record.ejection_time = duration
        record.probation = False
        record.ejections += 1
        self._sequence += 1
        heapq.heappush(self._ejected, (until, self._sequence, member))
        self._emit(BackendEjected(member.backend, duration, until, record.consecutive_failures,
                                  record.multiplier, record.ejections, on_probation))

    def expire(self, now: float) -> tuple[Backend, ...]:
        """Return to rotation (on probation) every backend whose ejection is over."""
        returned = []
        heap = self._ejected
        while heap and heap[0][0] <= now:
            until, _, member = heapq.heappop(heap)
            record = member.health
            if record.ejected_until != until:
                continue             # stale entry (backend removed and re-added)
            self._return(member, until, True, ReturnCause.TIME_UP, record.ejection_time)
            returned.append(member.backend)
        return tuple(returned)

    def _restore_all(self, healthy: Member, now: float) -> tuple[Backend, ...]:
        """End every ejection early: ``healthy`` answered while every backend was ejected
        (panic), so the outage is over. It is healthy again; the others return on probation
        (a first failure ejects one again at once), without waiting for their time."""
        ejected = [(until, member) for until, _, member in self._ejected
                   if member.health.ejected_until == until]
        self._ejected = []
        for until, member in ejected:
            ejected_for = now - (until - member.health.ejection_time)
            self._return(member, now, member is not healthy, ReturnCause.OUTAGE_OVER, ejected_for)
        return tuple(member.backend for _, member in ejected)

    def uneject(self, member: Member, now: float) -> bool:
        """End ``member``'s ejection now: an active health check passed (Envoy
        ``successful_active_health_check_uneject_host``). It returns healthy, not on
        probation: the probe is the evidence probation waits for. Returns True when it was
        ejected. Its heap entry is left to :meth:`expire`, which skips it."""
        record = member.health
        until = record.ejected_until
        if until is None:
            return False
        ejected_for = max(0.0, now - (until - record.ejection_time))
        self._return(member, now, False, ReturnCause.PROBE_PASSED, ejected_for)
        return True

    def _return(self, member: Member, at: float, probation: bool, cause: ReturnCause,
                ejected_for: float) -> None:
        """Put an ejected ``member`` back in rotation at ``at`` (on ``probation`` or not) and
        send the event. On probation, its requests in flight then are stale (see
        :meth:`success`); otherwise none is: a failure starts a new run and marks them."""
        record = member.health
        record.ejected_until = None
        record.probation = probation
        record.consecutive_failures = 0
        record.in_rotation_since = at
        record.stale_before, record.stale_left = at, member.in_flight if probation else 0
        _settle(record)
        self._emit(BackendReturned(member.backend, cause, ejected_for, probation))

    def forget(self, member: Member) -> None:
        """Drop a removed backend's ejection: if it is added again it starts healthy."""
        record = member.health
        if record.ejected_until is not None:
            self._ejected = [entry for entry in self._ejected if entry[2] is not member]
            heapq.heapify(self._ejected)
        record.ejected_until = None
        record.probation = False
        record.consecutive_failures = 0
        record.stale_left = 0
        _settle(record)
