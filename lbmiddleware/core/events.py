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
from dataclasses import dataclass, field
from typing import TypeAlias

from .backend import Backend

__all__ = [
    "BackendEjected", "ReturnCause", "BackendReturned", "ProbationPassed", "PanicStarted",
    "PanicEnded", "MembershipChanged", "BackendDown", "BackendUp", "DrainStarted", "DrainEnded",
    "SourceFailed", "SourceRecovered", "Event", "Listener", "log_event",
]

logger = logging.getLogger("lbmiddleware")
# A library's logger: without this handler, an application that configures no logging would
# get Python's last-resort output (a bare message on stderr, no time, level or logger) for
# every WARNING. With it, what the package logs goes where the application's configuration
# says (the gateway configures INFO with times: ``LB_LOG_LEVEL``), and nowhere otherwise.
logger.addHandler(logging.NullHandler())

#: The URLs a membership change's log line names of each kind (added, removed, reweighted).
URLS_SHOWN = 3


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
    PROBE_PASSED = "an active health check passed"


@dataclass(frozen=True, slots=True)
class BackendReturned:
    """``backend``'s ejection is over: it is back in rotation on probation (its first failure
    ejects it again) or, for the backend whose answer ended a full outage or that passed an
    active health check (Envoy ``successful_active_health_check_uneject_host``), healthy.

    ``still_down``: its active health checks keep it out all the same, so it gets no traffic
    until they pass (then :class:`BackendUp` is its return): ``"DOWN 1/2"`` (down, with the
    passes in a row it has of the ``rise`` it needs, HAProxy's notation) or ``"pending"``
    (it joined and no probe has passed yet); None when it is usable again, or checks are off.
    ``in_panic``: an answer in panic mode ended every ejection (``OUTAGE_OVER``) but the
    panic goes on (the members are down by their active checks), so no :class:`PanicEnded`
    reports this return."""

    backend: Backend
    cause: ReturnCause
    ejected_for: float            # seconds it was out
    on_probation: bool
    in_panic: bool = field(default=False, compare=False)
    # What the return is (its ejection over) does not change with this: the data stay equal.
    still_down: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ProbationPassed:
    """``backend`` answered on probation: it is healthy again (no longer one-strike)."""

    backend: Backend


@dataclass(frozen=True, slots=True)
class PanicStarted:
    """No member is usable: picks now choose among all of them (panic mode). Why, per member:
    ``ejected`` by passive health, else ``down`` by its active health checks, else
    ``pending``, a joiner not checked yet (which alone is no panic: a pool of joiners only
    is picked from while they wait for their first probes)."""

    members: tuple[Backend, ...]
    # The why, not what happened: PanicStarted(members) equals the event whatever it holds.
    ejected: tuple[Backend, ...] = field(default=(), compare=False)
    down: tuple[Backend, ...] = field(default=(), compare=False)
    pending: tuple[Backend, ...] = field(default=(), compare=False)

    @property
    def reason(self) -> str:
        """"every backend is ejected", "every backend is down by its health checks", or the
        mix: "no backend is usable (2 ejected, 1 down by its health checks)"."""
        parts = [(len(self.ejected), "ejected"), (len(self.down), "down by its health checks"),
                 (len(self.pending), "not checked yet")]
        parts = [(count, what) for count, what in parts if count]
        if not parts:
            return "no backend is usable"
        if len(parts) == 1 and parts[0][0] == len(self.members):
            return f"every backend is {parts[0][1]}"
        return "no backend is usable ({})".format(
            ", ".join(f"{count} {what}" for count, what in parts))


@dataclass(frozen=True, slots=True)
class PanicEnded:
    """Some member is usable again: picks are back to the usable ones.

    ``answered_by`` is the backend whose success ended the outage (every ejection then ends
    at once, ``returned`` lists those backends); None when an ejection time ran out or an
    update added a backend. ``still_down``: those of ``returned`` whose active health checks
    keep them out all the same (see :attr:`BackendReturned.still_down`).
    """

    answered_by: Backend | None
    returned: tuple[Backend, ...]
    still_down: tuple[Backend, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """The pool's members changed: ``Balancer.update()`` (``source``: the source's URL whose
    set changed, None for the static list), ``drain()`` or ``undrain()``. ``removed`` left the
    members (those with requests in flight drain: :class:`DrainStarted`); ``reweighted``
    stayed with a new weight or priority; ``members`` is the whole new membership, in
    listed order (the static backends first, then each source's)."""

    added: tuple[Backend, ...]
    removed: tuple[Backend, ...]
    reweighted: tuple[Backend, ...]
    members: tuple[Backend, ...]
    source: str | None = None
    # The call that made it when not an update: "drain()" or "undrain()".
    by: str | None = field(default=None, compare=False)

    @property
    def cause(self) -> str:
        """"source dns+http://...", "update()" (the static list), "drain()" or "undrain()"."""
        if self.by is not None:
            return self.by
        return "update()" if self.source is None else f"source {self.source}"

    @property
    def summary(self) -> str:
        """"added 2 (http://a:1, http://b:1), removed 1 (http://c:1)": the URLs of each
        change, up to :data:`URLS_SHOWN` of them (then "+N more")."""
        parts = []
        for what, backends in (("added", self.added), ("removed", self.removed),
                               ("reweighted", self.reweighted)):
            if backends:
                urls = ", ".join(b.url for b in backends[:URLS_SHOWN])
                if len(backends) > URLS_SHOWN:
                    urls += f" +{len(backends) - URLS_SHOWN} more"
                parts.append(f"{what} {len(backends)} ({urls})")
        return ", ".join(parts)


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
class DrainStarted:
    """``backend`` gets no new picks and keeps its ``in_flight`` requests; it leaves when they
    end or after ``drain_timeout``. ``reason``: ``"removed"`` (by its source or ``update()``)
    or ``"drain()"``."""

    backend: Backend
    in_flight: int
    reason: str


@dataclass(frozen=True, slots=True)
class DrainEnded:
    """A draining ``backend`` left the pool: its last request ended, or ``drain_timeout``
    ran out (``timed_out``) with ``in_flight_left`` requests still out (their ends are then
    ignored, even if the same URL is a member again by then). Or, ``cancelled``, it is a
    member again before either (listed again, or ``Balancer.undrain()``): its ``in_flight_left``
    requests end as the member's. Every :class:`DrainStarted` is followed by one."""

    backend: Backend
    timed_out: bool
    in_flight_left: int
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class SourceFailed:
    """A discovery ``source`` (its entry text) failed to answer: its last good set (``kept``
    backends) stays, and it is asked again in ``retry_in`` seconds (exponential back-off).
    Once per outage."""

    source: str
    error: str                    # why: "timeout", "SERVFAIL", "connection refused"
    retry_in: float               # seconds until the next try
    # The backends its last good set holds (0 before its first answer), None if not told.
    kept: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SourceRecovered:
    """A discovery ``source`` answered again after failing for ``outage`` seconds."""

    source: str
    outage: float


Event: TypeAlias = (BackendEjected | BackendReturned | ProbationPassed | PanicStarted | PanicEnded
                    | MembershipChanged | BackendDown | BackendUp | DrainStarted | DrainEnded
                    | SourceFailed | SourceRecovered)
Listener: TypeAlias = Callable[[Event], None]


def log_event(event: Event) -> None:
    """The default listener: one line on the ``lbmiddleware`` logger per event, at a level
    that makes each way back visible wherever the way out is. WARNING: an ejection and its
    end (time up, a probe passed, an answer in a panic that goes on; one that ends the panic
    is its PanicEnded line), a panic's start and every end, an active check's down
    and up, a source's failure and recovery. An ejection that ends while the backend's active
    checks keep it out is no return: its line says so, and its BackendUp line is the return.
    INFO: probation passed, a membership change (counts, a few URLs, the source or call), a
    drain's start and end."""
    if isinstance(event, BackendEjected):
        logger.warning("ejected backend %s for %.3gs: %s (ejection %d in a row)",
                       event.backend.url, event.duration, event.reason, event.in_a_row)
    elif isinstance(event, BackendReturned):
        _log_returned(event)
    elif isinstance(event, ProbationPassed):
        logger.info("backend %s passed its probation: healthy again", event.backend.url)
    elif isinstance(event, PanicStarted):
        logger.warning("%s: panic mode, picking among all %d", event.reason, len(event.members))
    elif isinstance(event, PanicEnded):
        _log_panic_ended(event)
    elif isinstance(event, MembershipChanged):
        logger.info("members changed by %s: %s; %d now", event.cause, event.summary,
                    len(event.members))
    elif isinstance(event, BackendDown):
        logger.warning("backend %s is down: health check failed (%s)",
                       event.backend.url, event.reason)
    elif isinstance(event, BackendUp):
        logger.warning("backend %s is up: health check passed (%s)",
                       event.backend.url, event.reason)
    elif isinstance(event, DrainStarted):
        logger.info("backend %s is draining (%s): %d requests in flight",
                    event.backend.url, event.reason, event.in_flight)
    elif isinstance(event, DrainEnded):
        if event.cancelled:
            logger.info("backend %s is a member again: its drain is cancelled, %d requests "
                        "in flight", event.backend.url, event.in_flight_left)
        elif event.timed_out:
            logger.info("backend %s left after its drain timeout, %d requests still in flight",
                        event.backend.url, event.in_flight_left)
        else:
            logger.info("backend %s drained and left", event.backend.url)
    elif isinstance(event, SourceFailed):
        kept = ("keeping its last backends" if event.kept is None
                else "no backends yet" if not event.kept
                else "keeping its last backend" if event.kept == 1
                else f"keeping its last {event.kept} backends")
        logger.warning("source %s failed: %s (%s; retry in %.3gs)",
                       event.source, event.error, kept, event.retry_in)
    elif isinstance(event, SourceRecovered):
        logger.warning("source %s answers again after %.3gs", event.source, event.outage)


def _log_returned(event: BackendReturned) -> None:
    """A return from ejection. An answer that ended a full outage returns every ejected
    backend, which its PanicEnded line says, once; unless the panic goes on (``in_panic``):
    then each return says it itself. An ejection over while the backend's checks keep it out
    (``still_down``) is said as that, whatever ended it: "returns" would read as traffic."""
    if event.still_down is not None:
        _log_still_down(event)
    elif event.cause is ReturnCause.TIME_UP:
        logger.warning("backend %s returns on probation after %.3gs ejected",
                       event.backend.url, event.ejected_for)
    elif event.cause is ReturnCause.PROBE_PASSED:
        logger.warning("backend %s returns after %.3gs ejected: an active health check "
                       "passed", event.backend.url, event.ejected_for)
    elif event.in_panic:
        if event.on_probation:
            logger.warning("backend %s returns on probation after %.3gs ejected: a backend "
                           "answered in panic mode (still on: no backend is usable yet)",
                           event.backend.url, event.ejected_for)
        else:
            logger.warning("backend %s returns after %.3gs ejected: it answered in panic "
                           "mode (still on: no backend is usable yet)",
                           event.backend.url, event.ejected_for)


def _log_still_down(event: BackendReturned) -> None:
    """An ejection over while active health keeps the backend out: what ended it, what keeps
    it out ("DOWN 0/2", or its first check still to pass), and until when."""
    if event.cause is ReturnCause.PROBE_PASSED:
        why = " (an active health check passed)"
    elif event.cause is ReturnCause.OUTAGE_OVER:
        why = (" (a backend answered in panic mode)" if event.on_probation
               else " (it answered in panic mode)")
    else:
        why = ""
    if event.still_down == "pending":
        out, until = "still waiting for its first health check", "out until one passes"
    else:
        out, until = f"still down by its health checks ({event.still_down})", "out until they pass"
    if event.in_panic:              # picked all the same: every member is, in a panic
        until = "; panic mode goes on: no backend is usable yet"
    else:
        until = ": " + until
    logger.warning("backend %s: ejection over after %.3gs%s, %s%s", event.backend.url,
                   event.ejected_for, why, out, until)


def _log_panic_ended(event: PanicEnded) -> None:
    """Every end of a panic, with what ended it: an answer, ejections over, or another
    change (a backend up by its checks, added by an update). The backends whose ejection
    ended but whose checks keep them out are counted apart: they do not return."""
    back = [b for b in event.returned if b not in event.still_down]
    down = len(event.returned) - len(back)
    if event.answered_by is not None:
        logger.warning("backend %s answered while every backend was ejected: %s%s; panic mode "
                       "over", event.answered_by.url, _return_count(len(back)),
                       f", {down} still down by {_its(down)} health checks" if down else "")
    elif back:
        urls = ", ".join(b.url for b in back[:URLS_SHOWN])
        if len(back) > URLS_SHOWN:
            urls += f" +{len(back) - URLS_SHOWN} more"
        logger.warning("panic mode over: %s, %s ejection time over (%s)%s",
                       _return_count(len(back)), _its(len(back)), urls,
                       f"; {down} still down by {_its(down)} health checks" if down else "")
    else:
        logger.warning("panic mode over: a backend is usable again")


def _return_count(count: int) -> str:
    """"1 backend returns", "3 backends return"."""
    return "1 backend returns" if count == 1 else f"{count} backends return"


def _its(count: int) -> str:
    return "its" if count == 1 else "their"
