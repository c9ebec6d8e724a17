"""What happens to a pool, as values: ejections, returns, panic, membership changes.

A :class:`~lbmiddleware.core.balancer.Balancer` queues an event under its lock when its state
changes, and hands it to every listener once the lock is released (``pool.subscribe(listener)``).
Delivery is synchronous: the call that caused the event (a pick, a report, a release, an update,
``stats()``) runs the listeners on its own thread before it returns, so a slow listener holds up
that call. No other call waits for a listener: the lock is already free, and an event caused
while another thread is delivering is delivered by that thread, in order, while the call that
caused it returns at once. The lock-free ends that finalizers use (``report_later``,
``release_later``) run no listener: their events go out with the next call. Keep listeners fast
(a counter, a log line); hand slow work (a network push) to a queue. Events reach the listeners
in the order they happened. Logging is one listener, :func:`log_event`, installed on every
Balancer; metrics and a status page are others.

Durations are seconds, independent of any clock; ``until`` is a reading of the balancer's
``timer`` (monotonic by default), for comparison with that timer only.

Per-request outcomes are not events: counters for them are read from ``Balancer.stats()``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from .backend import Backend

__all__ = [
    "BackendEjected", "ReturnCause", "BackendReturned", "ProbationPassed", "PanicStarted",
    "PanicEnded", "MembershipChanged", "BackendDown", "BackendUp",
    "SourceFailed", "SourceRecovered", "Event", "Listener", "log_event",
]

logger = logging.getLogger("lbmiddleware")


@dataclass(frozen=True, slots=True)
class BackendEjected:
    """Passive health took ``backend`` out of rotation for ``duration`` seconds."""

    backend: Backend
    duration: float               # seconds out: fail_timeout x in_a_row, capped
    until: float                  # the balancer's timer reading when it returns
    consecutive_failures: int     # failures in a row that led here (1 on probation)
    in_a_row: int                 # k: ejections in a row, the multiplier of the duration
    ejections: int                # every ejection of this backend so far, this one included
    on_probation: bool            # it failed on probation (one strike), not max_fails times

    @property
    def reason(self) -> str:
        if self.on_probation:
            return "failed on probation"
        return f"{self.consecutive_failures} consecutive failures"


class ReturnCause(enum.Enum):
    """Why an ejected backend is back in rotation."""

    TIME_UP = "its ejection time is over"
    OUTAGE_OVER = "a backend answered while every backend was ejected"


@dataclass(frozen=True, slots=True)
class BackendReturned:
    """An ejected ``backend`` is back in rotation: on probation (its first failure ejects it
    again) or, for the backend whose answer ended a full outage, healthy."""

    backend: Backend
    cause: ReturnCause
    ejected_for: float            # seconds it was out
    on_probation: bool


@dataclass(frozen=True, slots=True)
class ProbationPassed:
    """``backend`` answered on probation: it is healthy again (no longer one-strike)."""

    backend: Backend


@dataclass(frozen=True, slots=True)
class PanicStarted:
    """Every member is ejected: picks now choose among all of them (panic mode)."""

    members: tuple[Backend, ...]


@dataclass(frozen=True, slots=True)
class PanicEnded:
    """Some member is usable again: picks are back to the usable ones.

    ``answered_by`` is the backend whose success ended the outage (every ejection then ends
    at once, ``returned`` lists those backends); None when an ejection time ran out or an
    update added a backend.
    """

    answered_by: Backend | None
    returned: tuple[Backend, ...]


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """``Balancer.update()`` changed the pool. ``reweighted`` stayed with a new weight;
    ``members`` is the whole new membership, in listed order."""

    added: tuple[Backend, ...]
    removed: tuple[Backend, ...]
    reweighted: tuple[Backend, ...]
    members: tuple[Backend, ...]


@dataclass(frozen=True, slots=True)
class BackendDown:
    """Active health checks took ``backend`` out: ``fall`` failed probes in a row (one, for a
    backend that had not passed yet). ``reason`` is the last probe's ("status 503")."""

    backend: Backend
    reason: str


@dataclass(frozen=True, slots=True)
class BackendUp:
    """Active health checks brought ``backend`` in: ``rise`` passed probes in a row (one, for
    a backend that joined later and had not been checked yet)."""

    backend: Backend
    reason: str


@dataclass(frozen=True, slots=True)
class SourceFailed:
    """A discovery ``source`` (its entry text) failed to answer: its last good set stays, and
    it is asked again in ``retry_in`` seconds (exponential back-off). Once per outage."""

    source: str
    error: str                    # why: "timeout", "SERVFAIL", "connection refused"
    retry_in: float               # seconds until the next try


@dataclass(frozen=True, slots=True)
class SourceRecovered:
    """A discovery ``source`` answered again after failing for ``outage`` seconds."""

    source: str
    outage: float


Event: TypeAlias = (BackendEjected | BackendReturned | ProbationPassed | PanicStarted | PanicEnded
                    | MembershipChanged | BackendDown | BackendUp | SourceFailed | SourceRecovered)
Listener: TypeAlias = Callable[[Event], None]


def log_event(event: Event) -> None:
    """The default listener: one line on the ``lbmiddleware`` logger per ejection, per return
    when its time is up, per start of panic and per outage ended by an answer."""
    if isinstance(event, BackendEjected):
        logger.warning("ejected backend %s for %.3gs: %s (ejection %d in a row)",
                       event.backend.url, event.duration, event.reason, event.in_a_row)
    elif isinstance(event, BackendReturned):
        if event.cause is ReturnCause.TIME_UP:
            logger.info("backend %s returns on probation after %.3gs ejected",
                        event.backend.url, event.ejected_for)
    elif isinstance(event, PanicStarted):
        logger.warning("every backend is ejected: panic mode, picking among all %d",
                       len(event.members))
    elif isinstance(event, PanicEnded):
        if event.answered_by is not None:
            logger.info("backend %s answered while every backend was ejected: %d backends return",
                        event.answered_by.url, len(event.returned))
