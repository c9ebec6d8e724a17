"""Ownership of a pool by one event loop's thread: the hand-off of every other thread's calls.

A server whose requests all run on one event loop (the gateway's fast path) owns each of its
pools (:meth:`Balancer.own <lbmiddleware.core.balancer.Balancer.own>`): the owner thread then
picks and reports through the pool's :class:`~lbmiddleware.core.balancer.Lane`, without the
lock, while the other threads that use the pool (the fleet's thread: a source's ``update()``,
a probe's ``report_probe()``; the admin listener's: ``stats()``) still call it as before. Their
calls are handed to the owner's loop (``call_soon_threadsafe``), run there between two of its
callbacks, and the caller waits for the result: the same result, exception and events as under
the lock, in the same order (the events are delivered on the owner thread, as a call's events
always are on the thread that made the change).

Why that is safe: one thread only, the owner, ever changes the pool's state. A call from
another thread checks for an owner holding the pool's lock (``own()`` sets it holding the
same lock), so a call that began before ``own()`` ends before ``own()`` returns, and one that
begins after is handed over. Envoy's workers get their cluster updates the same way: posted
to each worker's own dispatcher, never a lock on the request path.

A method of the pool that another thread may call raises :class:`Elsewhere` on that thread
(checked holding the pool's lock) and :func:`handed_over` hands it to the owner.

Ownership ends with :meth:`Owner.end`: ``disown()`` on the owner thread, or a caller that
finds the owner's loop closed (a server gone without ``disown()``). The calls still queued
then run on that thread, through the pool's lock. In a forked child every ownership ends
(the owner thread does not exist there); the child owns its pools again on its own loop.

Standard library only, no I/O: the loop is any object with ``call_soon_threadsafe`` and
``is_closed`` (an asyncio loop, uvloop's).
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

__all__ = ["Owner", "OwnerLoop", "WAIT_STEP", "Elsewhere", "handed_over"]

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")

#: Seconds between two looks, by a thread waiting for the owner's loop, at whether that loop
#: was closed meanwhile (then the waiting thread runs the queued calls itself).
WAIT_STEP = 0.25


class OwnerLoop(Protocol):
    """What ownership needs of the owner's event loop (an asyncio or uvloop loop)."""

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> object: ...

    def is_closed(self) -> bool: ...


class _Call(Generic[T]):
    """One call handed to the owner: run exactly once, by whichever thread takes it."""

    __slots__ = ("function", "done", "returned", "error", "_open")

    def __init__(self, function: Callable[[], T]) -> None:
        self.function = function
        self.done = threading.Event()
        self.returned: list[T] = []             # [its result], once the function returned
        self.error: BaseException | None = None
        self._open = [True]

    def run(self) -> None:
        try:
            self._open.pop()            # atomic: of two threads, one takes it
        except IndexError:
            return
        try:
            self.returned.append(self.function())
        except BaseException as exc:    # (re-raised on the calling thread, never on the loop)
            self.error = exc
        finally:
            self.done.set()


class Owner:
    """The owner thread (the one that made it) and its loop; hands other threads' calls to
    that loop. ``ended`` is called once, when ownership ends, before the queued calls run:
    the pool forgets its owner there (no lock: one attribute; another thread that reads it
    set hands its call here, and runs it itself once ownership is over)."""

    def __init__(self, loop: OwnerLoop, ended: Callable[[Owner], None]) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        self._ended = ended
        self._calls: collections.deque[_Call[Any]] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self.active = True
        _owners.add(self)

    def call(self, function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``function(*args, **kwargs)`` on the owner's loop and wait for its result (or
        exception). Ownership over (or ending meanwhile): run here. Never call it on the
        owner thread (it would wait for itself)."""
        call: _Call[T] = _Call(lambda: function(*args, **kwargs))
        closed = False
        with self._lock:
            if self.active:
                self._calls.append(call)
                if not self._scheduled:
                    try:
                        self.loop.call_soon_threadsafe(self._serve)
                        self._scheduled = True
                    except RuntimeError:            # the loop is closed
                        closed = True
            else:
                closed = True
        if closed:
            self.end()                  # runs this call too (queued), or:
            call.run()                  # (not queued: ownership had ended)
        while not call.done.wait(WAIT_STEP):
            if self.loop.is_closed():
                self.end()
        error = call.error
        if error is not None:
            call.error = None           # no reference cycle through the traceback
            try:
                raise error
            finally:
                error = None
        return call.returned[0]                 # (done, and no error: it returned)

    def _serve(self) -> None:
        """On the owner's loop: run the calls queued so far, in order."""
        with self._lock:
            self._scheduled = False
            calls = list(self._calls)
            self._calls.clear()
        for call in calls:
            call.run()

    def end(self) -> None:
        """Ownership ends (idempotent): the pool forgets its owner, then the calls still
        queued run on this thread, through the pool's lock."""
        with self._lock:
            if not self.active:
                return
        self._ended(self)               # first: a call run from now on takes the lock
        with self._lock:
            self.active = False
            calls = list(self._calls)
            self._calls.clear()
        for call in calls:
            call.run()

    def __repr__(self) -> str:
        return f"<Owner thread={self.thread} {'active' if self.active else 'ended'}>"


class Elsewhere(Exception):
    """Raised, holding the pool's lock, by a call on a thread that does not own the pool
    (``Balancer._mine``): the call is handed to ``owner`` (:func:`handed_over`)."""

    def __init__(self, owner: Owner) -> None:
        super().__init__()
        self.owner = owner


def handed_over(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """A method that raises :class:`Elsewhere` on a thread that does not own the pool (its
    locked block begins with ``self._mine()``): it runs on the owner's thread instead, and
    this one waits for its result."""

    @functools.wraps(method)
    def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except Elsewhere as elsewhere:
            return elsewhere.owner.call(run, self, *args, **kwargs)

    return run


_owners: weakref.WeakSet[Owner] = weakref.WeakSet()


def _forget_after_fork() -> None:
    """In a forked child the owner threads do not exist (but the forking one, whose loop
    does not run on in the child either): every ownership ends, without running the queued
    calls (their callers are threads of the parent) nor taking a lock (another thread may
    have held it at the fork)."""
    for owner in list(_owners):
        owner._lock = threading.Lock()
        owner._calls.clear()
        owner.active = False
        owner._ended(owner)


os.register_at_fork(after_in_child=_forget_after_fork)
