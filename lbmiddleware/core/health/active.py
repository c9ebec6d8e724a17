"""Active health: the state a backend's probes lead to (HAProxy's ``rise``/``fall`` counter).

The probes themselves are I/O (:mod:`lbmiddleware.probes`); each result comes here through
``Balancer.report_probe``. The rules (SEMANTICS part two):

* A counter h in 0 .. rise+fall-1. A fail decrements it and, if it drops below ``rise``, snaps
  it to 0; a pass increments it and, if it reaches ``rise``, snaps it to rise+fall-1. The
  backend is up while h >= rise. So a fully up backend needs ``fall`` failed probes in a row
  to go down and a down one ``rise`` passes in a row to come up, and one result of the other
  kind in between starts the count again: a flapping backend does not flap the pool.
* A backend that is a member when checking starts is up with h = rise (HAProxy): traffic is
  not held up waiting for probes, and its first failure takes it down, since nothing has
  shown it healthy yet.
* A backend that joins later (discovery, ``update()``) is *pending*: no traffic until a
  probe passes, and that one pass is enough (Envoy: the first result decides). A first
  failure makes it down like any other, and then it needs ``rise`` passes. Whether a pending
  backend gets traffic because the pool would otherwise be empty is the balancer's call.
  Until it is up for the first time it is *joining* (``ip_hash`` keeps it out of its table,
  so that no key moves for a backend that may never serve).

Each :class:`ActiveRecord` is written only here. Each change of status (up, down, pending)
is one event, :class:`~lbmiddleware.core.events.BackendUp` or ``BackendDown`` with the
deciding probe's reason, passed to ``emit`` (the balancer queues it under its lock).
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import ConfigError
from ..backend import Backend
from ..events import BackendDown, BackendUp, Event

__all__ = ["ActiveHealth", "ActiveRecord"]


class ActiveRecord:
    """One backend's active health: the counter, its status and the last probe's result.

    A new record is pending (no traffic) until :meth:`ActiveHealth.start` sets it."""

    __slots__ = ("h", "up", "pending", "joining", "last", "checked_at", "passes", "fails",
                 "fails_in_a_row", "passes_total", "fails_total")

    def __init__(self) -> None:
        self.h = 0                          # HAProxy's counter, 0 .. rise + fall - 1
        self.up = False
        self.pending = True                 # joined later and not probed yet
        self.joining = True                 # joined later and not up since (probed or not)
        self.last: str | None = None        # the last probe's reason ("ok", "status 503")
        self.checked_at: float | None = None
        self.passes = 0                     # probes passed since start()
        self.fails = 0                      # probes failed since start()
        self.fails_in_a_row = 0             # failed probes since the last pass (or start())
        self.passes_total = 0               # every probe result of this backend's state,
        self.fails_total = 0                # never reset (metrics' counters read them)


class ActiveHealth:
    """Applies the rise/fall rules to ActiveRecords."""

    def __init__(self, rise: int, fall: int, emit: Callable[[Event], None]) -> None:
        _check_count("health_check_rise", rise)
        _check_count("health_check_fall", fall)
        self.rise = rise
        self.fall = fall
        self._top = rise + fall - 1
        self._emit = emit

    def start(self, record: ActiveRecord, backend: Backend, joined_later: bool) -> None:
        """(Re)start ``backend``'s record: up with h = rise for a member when checking
        starts, pending (no traffic until its first pass) for one that joined later."""
        del backend             # the same arguments as result(); nothing to say yet
        record.h = 0 if joined_later else self.rise
        record.up = not joined_later
        record.pending = record.joining = joined_later
        record.last = record.checked_at = None
        record.passes = record.fails = record.fails_in_a_row = 0

    def result(self, record: ActiveRecord, backend: Backend, ok: bool, reason: str,
               now: float) -> bool:
        """Count one probe's result; True when ``backend``'s status (up, down, pending)
        changed, which is then one BackendUp or BackendDown event with ``reason``."""
        record.checked_at = now
        if ok:
            record.passes += 1
            record.passes_total += 1
            record.fails_in_a_row = 0
            record.last = reason or "ok"
            if record.h < self._top:
                record.h += 1
                if record.h >= self.rise or record.pending:
                    record.h = self._top
            if record.up or record.h < self.rise:
                return False
            record.up, record.pending, record.joining = True, False, False
            self._emit(BackendUp(backend, record.last))
            return True
        record.fails += 1
        record.fails_total += 1
        record.fails_in_a_row += 1
        record.last = reason or "failed"
        if record.h:
            record.h -= 1
            if record.h < self.rise:
                record.h = 0
        if not (record.up or record.pending) or record.h >= self.rise:
            return False
        record.up, record.pending = False, False
        self._emit(BackendDown(backend, record.last))
        return True

    def would_come_up(self, record: ActiveRecord) -> bool:
        """True when a pass now would bring ``record`` up (a guess, read without the
        balancer's lock: it prepares what that change needs)."""
        return not record.up and (record.pending or record.h + 1 >= self.rise)

    def status(self, record: ActiveRecord) -> str:
        """"up", "down" or "pending" (joined later, not probed yet)."""
        return "pending" if record.pending else "up" if record.up else "down"

    def why_out(self, record: ActiveRecord) -> str | None:
        """What keeps ``record``'s backend out of rotation: ``"DOWN 1/2"`` (down, with the
        passes in a row it has of the ``rise`` it needs: HAProxy's notation) or ``"pending"``
        (joined, not probed yet); None when it is up."""
        if record.up:
            return None
        return "pending" if record.pending else f"DOWN {record.h}/{self.rise}"

    def progress(self, record: ActiveRecord) -> tuple[int, int]:
        """The progress the probes made: (passes in a row while down, failures in a row
        while up); 0 for the other."""
        if record.up:
            return 0, record.fails_in_a_row
        return record.h, 0

    def to_go(self, record: ActiveRecord) -> tuple[int, int]:
        """(failed probes that take ``record`` down now, passes that bring it up now); 0 for
        the status it is not in. A member present at start (h = rise) is one failure from
        down; one that has passed needs ``fall``; a pending joiner needs one pass."""
        if record.up:
            return record.h - self.rise + 1, 0
        return 0, 1 if record.pending else self.rise - record.h

    def row(self, record: ActiveRecord, now: float) -> dict[str, object]:
        """The record as ``stats()`` shows it under ``health_check`` at ``now``:
        ``rise``/``fall`` the progress made, ``fails_to_down``/``passes_to_up`` what is left,
        ``rise_needed``/``fall_needed`` the settings (a page prints "DOWN 1/2"),
        ``checked_ago`` seconds since the last probe, lifetime ``passes_total``/``fails_total``."""
        rise, fall = self.progress(record)
        fails_to_down, passes_to_up = self.to_go(record)
        checked_at = record.checked_at
        return {"status": self.status(record), "last": record.last, "rise": rise, "fall": fall,
                "fails_to_down": fails_to_down, "passes_to_up": passes_to_up,
                "checked_at": checked_at,
                "checked_ago": None if checked_at is None else max(0.0, now - checked_at),
                "passes_total": record.passes_total, "fails_total": record.fails_total,
                "rise_needed": self.rise, "fall_needed": self.fall}


def _check_count(name: str, value: int) -> None:
    if type(value) is not int or value < 1:
        raise ConfigError(f"{name} has value {value!r}: not a count of probes (1 or more)")
