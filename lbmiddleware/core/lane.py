"""The owner thread's lock-free calls on a pool it owns: the :class:`Lane`.

:meth:`Balancer.own <lbmiddleware.core.balancer.Balancer.own>` makes the calling thread (an
event loop's) the pool's owner and returns its lane; :mod:`.owner` hands every other thread's
call to that loop. The lane runs the pool's own steps (``_take`` for a pick, ``_report_now``
for a report, ``_release_now`` for a release: the very ones its locked methods run holding
the lock), without the lock, and delivers their events as they do. Once ownership ended
(``disown()``, the owner's loop closed) it falls back to the pool's locked methods.

Standard library only, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sized
from typing import TYPE_CHECKING, Protocol

from .attempts import Completion

if TYPE_CHECKING:
    from .backend import Backend
    from .owner import Owner
    from .state import BackendState

__all__ = ["Lane", "OwnedPool"]


class OwnedPool(Protocol):
    """What a :class:`Lane` needs of its pool (a :class:`~lbmiddleware.core.balancer.Balancer`):
    the locked methods it falls back to, and the steps they run holding the lock."""

    _owner: Owner | None

    @property
    def _outbox(self) -> Sized: ...

    def pick(self, key: str | None = None, exclude: Collection[Backend | str] = (),
             prefer: str | None = None, now: float | None = None) -> Backend: ...

    def report(self, backend: Backend, ok: bool = True, latency: float | None = None, *,
               bytes_sent: int = 0, bytes_received: int = 0,
               status: int | None = None, now: float | None = None) -> None: ...

    def release(self, backend: Backend) -> None: ...

    def report_later(self, backend: Backend, ok: bool = True, latency: float | None = None, *,
                     bytes_sent: int = 0, bytes_received: int = 0,
                     status: int | None = None) -> None: ...

    def release_later(self, backend: Backend) -> None: ...

    def spend_retry(self, tried: Collection[Backend | str] = ()) -> bool: ...

    def refund_retry(self, picked: bool = False) -> None: ...

    def usual_latency(self, backend: Backend | str) -> float | None: ...

    def sticky_value(self, backend: Backend | str) -> str: ...

    def _take(self, key: str | None, exclude: Collection[Backend | str], prefer: str | None,
              now: float | None) -> BackendState: ...

    def _report_now(self, backend: Backend, ok: bool, latency: float | None, sent: int,
                    received: int, status: int | None, now: float | None) -> None: ...

    def _release_now(self, backend: Backend) -> None: ...

    def _deliver(self) -> None: ...

    def _deliver_pick(self, state: BackendState) -> None: ...

    def _spend(self, tried: Collection[Backend | str], now: float | None = None) -> bool: ...

    def _refund(self, picked: bool, now: float | None = None) -> None: ...

    def _usual(self, backend: Backend | str, now: float | None = None) -> float | None: ...


class Lane:
    """The owner thread's calls on a pool it owns (:meth:`Balancer.own
    <lbmiddleware.core.balancer.Balancer.own>`): :meth:`pick`, :meth:`report`,
    :meth:`release`, :meth:`begin` and the retry budget, without the lock, each taking the
    caller's clock reading (``now=``, the pool's timer; None reads it).

    A :class:`~lbmiddleware.core.attempts.Picker` and ``Reporter``: give it to
    :class:`~lbmiddleware.core.attempts.Attempts` instead of the pool. The steps are the
    pool's own (the same choice, counts, health and events as :meth:`Balancer.pick` and
    :meth:`Balancer.report` with the same readings); only the lock is left out, which is
    safe because no other thread changes an owned pool. Call it on the owner thread only
    (the loop's callbacks and tasks). Once ownership ended (:meth:`Balancer.disown`) its
    calls take the pool's lock, as the pool's methods do.
    """

    __slots__ = ("balancer", "_owner")

    def __init__(self, balancer: OwnedPool, owner: Owner) -> None:
        self.balancer = balancer
        self._owner = owner

    def pick(self, key: str | None = None, exclude: Collection[Backend | str] = (),
             prefer: str | None = None, now: float | None = None) -> Backend:
        """:meth:`Balancer.pick`."""
        pool = self.balancer
        if pool._owner is not self._owner:
            return pool.pick(key, exclude, prefer, now)
        try:
            state = pool._take(key, exclude, prefer, now)
        except BaseException:
            if pool._outbox:
                pool._deliver()
            raise
        if pool._outbox:
            pool._deliver_pick(state)
        return state.backend

    def begin(self, key: str | None = None, exclude: Collection[Backend] = (),
              prefer: str | None = None, now: float | None = None) -> Completion:
        """:meth:`Balancer.begin`: its handle ends through this lane."""
        pool = self.balancer
        if pool._owner is not self._owner:
            backend = pool.pick(key, exclude, prefer, now)
        else:
            # (pick, inlined: once per request)
            try:
                state = pool._take(key, exclude, prefer, now)
            except BaseException:
                if pool._outbox:
                    pool._deliver()
                raise
            if pool._outbox:
                pool._deliver_pick(state)
            backend = state.backend
        # (Completion.__init__'s three fields, set here: a frame less per request)
        handle = _new_handle(_LaneCompletion)
        handle.backend = backend
        handle._balancer = self
        handle._open = [True]
        return handle

    def report(self, backend: Backend, ok: bool = True, latency: float | None = None, *,
               bytes_sent: int = 0, bytes_received: int = 0,
               status: int | None = None, now: float | None = None) -> None:
        """:meth:`Balancer.report`."""
        pool = self.balancer
        if pool._owner is not self._owner:
            pool.report(backend, ok, latency, bytes_sent=bytes_sent,
                        bytes_received=bytes_received, status=status, now=now)
            return
        pool._report_now(backend, ok, latency, bytes_sent, bytes_received, status, now)
        if pool._outbox:
            pool._deliver()

    def release(self, backend: Backend) -> None:
        """:meth:`Balancer.release`."""
        pool = self.balancer
        if pool._owner is not self._owner:
            pool.release(backend)
            return
        pool._release_now(backend)
        if pool._outbox:
            pool._deliver()

    def report_later(self, backend: Backend, ok: bool = True, latency: float | None = None, *,
                     bytes_sent: int = 0, bytes_received: int = 0,
                     status: int | None = None) -> None:
        """:meth:`Balancer.report_later` (queued; the owner's next call applies it)."""
        self.balancer.report_later(backend, ok, latency, bytes_sent=bytes_sent,
                                   bytes_received=bytes_received, status=status)

    def release_later(self, backend: Backend) -> None:
        """:meth:`Balancer.release_later` (queued; the owner's next call applies it)."""
        self.balancer.release_later(backend)

    def spend_retry(self, tried: Collection[Backend | str] = (),
                    now: float | None = None) -> bool:
        """:meth:`Balancer.spend_retry`."""
        pool = self.balancer
        if pool._owner is not self._owner:
            return pool.spend_retry(tried)
        return pool._spend(tried, now)

    def refund_retry(self, picked: bool = False, now: float | None = None) -> None:
        """:meth:`Balancer.refund_retry`."""
        pool = self.balancer
        if pool._owner is not self._owner:
            pool.refund_retry(picked)
        else:
            pool._refund(picked, now)

    def usual_latency(self, backend: Backend | str, now: float | None = None) -> float | None:
        """:meth:`Balancer.usual_latency`."""
        pool = self.balancer
        if pool._owner is not self._owner:
            return pool.usual_latency(backend)
        return pool._usual(backend, now)

    def sticky_value(self, backend: Backend | str) -> str:
        """:meth:`Balancer.sticky_value`."""
        return self.balancer.sticky_value(backend)

    def __repr__(self) -> str:
        owned = "owned" if self.balancer._owner is self._owner else "ownership ended"
        return f"<Lane of {self.balancer!r} ({owned})>"


class _LaneCompletion(Completion):
    """A :class:`~lbmiddleware.core.attempts.Completion` of a lane's pick (made by
    :meth:`Lane.begin`): its end reports straight into the pool, as :meth:`Lane.report`
    does, two calls fewer per request. Its finalizer is Completion's: a handle dropped
    without an end is released (queued for the owner's next call)."""

    __slots__ = ()
    _balancer: Lane

    def _report(self, ok: bool, latency: float | None, bytes_sent: int, bytes_received: int,
                status: int | None, now: float | None) -> None:
        try:
            self._open.pop()
        except IndexError:
            return              # already ended
        lane = self._balancer
        pool = lane.balancer
        if pool._owner is lane._owner:
            pool._report_now(self.backend, ok, latency, bytes_sent, bytes_received, status, now)
            if pool._outbox:
                pool._deliver()
        else:
            pool.report(self.backend, ok, latency, bytes_sent=bytes_sent,
                        bytes_received=bytes_received, status=status, now=now)


_new_handle = object.__new__
