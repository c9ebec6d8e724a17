"""Balancer: backends + policy + passive health, behind pick/report and a context manager.

Every public method takes one short lock (no I/O, no waiting under it), so one Balancer
is shared safely by threads and by asyncio tasks.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from ..errors import ConfigError, NoHealthyBackend
from .attempts import Completion, Outcome
from .backend import Backend, parse_backends
from .events import Event, Listener, MembershipChanged, PanicEnded, PanicStarted, log_event
from .health import PassiveHealth
from .load import PeakEwma
from .policies import Policy, make_policy
from .settings import Settings, resolve
from .state import BackendState, Members

__all__ = ["Balancer"]


_NONE: frozenset[BackendState] = frozenset()

logger = logging.getLogger("lbmiddleware")


class Balancer:
    """Chooses a backend per request and learns from each outcome.

    ::

        pool = Balancer(["http://10.0.0.1:8080", Backend("http://10.0.0.2:8080", weight=3)],
                        policy="ip_hash", max_fails=3, fail_timeout=10.0)
        backend = pool.pick(key="203.0.113.7")
        pool.report(backend, ok=True, latency=0.012)

    Keyword arguments are the fields of :class:`~lbmiddleware.core.settings.Settings`
    (what the Balancer reads; retries and timeouts are each front-end's own); pass
    ``settings=`` instead to share one object. ``timer`` (seconds, monotonic) and ``rng``
    (a ``random.Random``) are injectable so tests drive time and chance.
    """

    def __init__(
        self,
        backends: Iterable[str | Backend] | str | None = None,
        policy: str | None = None,
        *,
        settings: Settings | None = None,
        timer: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        **options: Any,
    ) -> None:
        if backends is not None:
            options["backends"] = backends
        if policy is not None:
            options["policy"] = policy
        # Only the Balancer's own settings: a front-end's (retries=...) raises a TypeError
        # that says where it belongs, and so does a settings= object of another class.
        settings = resolve("Balancer", (), options, settings=settings, from_env=False).core
        self.settings = settings
        self._timer = timer
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        # Events are queued under the lock, posted to the outbox before it is released and
        # delivered after, in order, by whichever thread holds _delivering (see _deliver()).
        self._events: list[Event] = []
        self._outbox: collections.deque[Event] = collections.deque()
        self._delivering = threading.Lock()
        # (token, listener): one entry per subscribe(), removed by its own token only.
        self._listeners: tuple[tuple[object, Listener], ...] = ((object(), log_event),)
        self._health = PassiveHealth(settings.max_fails, settings.fail_timeout,
                                     settings.max_ejection_time, self._events.append)
        self._load = PeakEwma()
        self._policy: Policy = make_policy(settings.policy, self._rng, timer, self._load)
        self._states: dict[str, BackendState] = {}      # url -> state, listed order
        self._retired: dict[str, BackendState] = {}     # removed, requests still in flight
        self._deferred: collections.deque[tuple[Backend, bool | None, float | None]] = (
            collections.deque())                        # see report_later(), release()
        self._generation = 0
        self._healthy = self._all = Members((), 0)
        self._panic = False
        self._apply_membership(settings.static_backends)
        self._events.clear()         # the first members are no change: nobody listens yet

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 timer: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, **overrides: Any) -> Balancer:
        """A Balancer from ``LB_*`` variables (``environ`` for tests); keyword arguments win."""
        return cls(settings=Settings.from_env(environ, **overrides), timer=timer, rng=rng)

    # -- membership ---------------------------------------------------------------------

    @property
    def policy(self) -> str:
        return self.settings.policy

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The current members, in listed order."""
        with self._lock:
            return tuple(s.backend for s in self._states.values())

    def update(self, backends: Iterable[str | Backend] | str) -> None:
        """Change the membership at runtime.

        Backends that stay keep their live state (health, latency, in-flight; a new weight
        is taken); removed ones are no longer picked but their in-flight requests still
        report normally; sticky keys move close to the minimum. An empty list is allowed
        (every pick then raises :class:`NoHealthyBackend`). Each change sends a
        :class:`~lbmiddleware.core.events.MembershipChanged` event.

        The same members with the same weights, in any order and spelling, change nothing
        (a DNS refresh every few seconds, say): no hash table is rebuilt, the round-robin
        sequence goes on, the listed order stays, no event is sent.
        """
        new = parse_backends(backends, allow_empty=True)
        if self._same_members(new):
            return                  # nothing to rebuild, restart or announce
        prepared = self._policy.prepare(new)      # slow part (a hash table) outside the lock
        with self._lock:
            if not self._same_members(new):
                self._apply_membership(new, prepared)
            self._post()
        self._deliver()

    def _same_members(self, backends: tuple[Backend, ...]) -> bool:
        """True when ``backends`` are the members now, with the same weights, in any order."""
        states = self._states
        if len(backends) != len(states):
            return False
        for backend in backends:
            state = states.get(backend.url)
            if state is None or state.weight != backend.weight:
                return False
        return True

    def _apply_membership(self, backends: tuple[Backend, ...], prepared: Any = None) -> None:
        old = self._states
        states: dict[str, BackendState] = {}
        added, reweighted = [], []
        for backend in backends:
            state = old.get(backend.url)
            if state is None:
                added.append(backend)
                state = self._retired.pop(backend.url, None)
                if state is None:
                    state = BackendState(backend, self._timer())
            elif state.weight != backend.weight:
                reweighted.append(backend)
            state.backend = backend
            state.weight = backend.weight
            states[backend.url] = state
        removed = []
        for url, state in old.items():
            if url not in states:
                removed.append(state.backend)
                self._health.forget(state)
                if state.in_flight:
                    self._retired[url] = state
        self._states = states
        self._policy.membership_changed(tuple(states.values()), prepared)
        self._events.append(MembershipChanged(tuple(added), tuple(removed), tuple(reweighted),
                                              backends))
        self._refresh()             # after the change, the panic it may start or end

    def _refresh(self, answered_by: Backend | None = None,
                 returned: tuple[Backend, ...] = ()) -> None:
        """Rebuild the member snapshots after a change of membership or health; ``answered_by``
        and ``returned`` say what ended an ejection (for the event if panic ends)."""
        self._generation += 1
        everyone = tuple(self._states.values())
        self._all = Members(everyone, self._generation)
        self._healthy = Members(tuple(s for s in everyone if s.health.ejected_until is None),
                                self._generation)
        panic = bool(everyone) and not self._healthy.states
        if panic != self._panic:
            self._panic = panic
            if panic:
                self._events.append(PanicStarted(tuple(s.backend for s in everyone)))
            else:
                self._events.append(PanicEnded(answered_by, returned))

    # -- events -------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event of this pool from now on (see
        :mod:`lbmiddleware.core.events`); returns a function that unsubscribes it.

        Listeners run synchronously, after the pool's lock is released, one event at a time,
        in the order the events happened (docs/contract.md, "Passive health", rule 10). The
        call that caused an event (a pick, report, release, update or stats) runs them on
        its own thread before it returns, so a slow listener holds up that call; no other
        call waits for it (an event caused while another thread is delivering is delivered
        by that thread, and the call that caused it returns at once). The lock-free ends
        (``report_later``, ``release_later``, a completion ended from a finalizer) run no
        listener: their events go out with the next call. Keep listeners fast (a counter, a
        log line) and hand slow work (a network push) to a queue.

        A listener that raises an ``Exception`` is logged (``logger.exception``) and the
        other listeners still get the event. One that raises any other ``BaseException``
        (a cancellation, an interrupt) has it raised to the delivering call once the other
        listeners have had the event; the events after it wait for the next call (a pick
        that raises so counts nothing in flight). Logging is the one listener every
        Balancer has from the start. Subscribing a listener twice calls it twice per
        event; each returned function removes its own subscription, once.
        """
        token = object()
        with self._lock:
            self._listeners = (*self._listeners, (token, listener))

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(entry for entry in self._listeners
                                        if entry[0] is not token)

        return unsubscribe

    def _post(self) -> None:
        """Move the events queued under the lock to the outbox (call it holding the lock)."""
        events = self._events
        if events:
            self._outbox.extend(events)
            events.clear()

    def _deliver(self) -> None:
        """Hand the posted events to the listeners, outside the pool's lock.

        One thread at a time delivers, oldest event first; a thread that finds another one
        delivering leaves its events to it (that thread looks again after it stops), so events
        keep their order and a listener that calls back into the pool cannot deadlock.
        Only the normal calls deliver, never the lock-free paths (see :meth:`report_later`).
        """
        outbox = self._outbox
        while outbox:
            if not self._delivering.acquire(blocking=False):
                return
            try:
                while outbox:
                    self._hand_out(outbox.popleft())
            finally:
                self._delivering.release()

    def _hand_out(self, event: Event) -> None:
        """``event`` to every listener. A ``BaseException`` that is not an ``Exception`` (a
        cancellation, an interrupt) is raised once every listener has had the event; the
        events after it stay in the outbox for the next call."""
        escaped: BaseException | None = None
        for _, listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("event listener %r failed on %r", listener, event)
            except BaseException as exc:
                if escaped is None:
                    escaped = exc
                else:
                    logger.exception("event listener %r failed on %r", listener, event)
        if escaped is not None:
            try:
                raise escaped
            finally:
                escaped = None          # no reference cycle through the traceback

    # -- pick and report ----------------------------------------------------------------

    def pick(self, key: str | None = None, exclude: Collection[Backend | str] = ()) -> Backend:
        """Choose a backend and count the request in flight; end it with :meth:`report`.

        ``key`` is the sticky key for ``ip_hash`` (ignored by the other policies);
        ``exclude`` lists backends already tried for this request. Raises
        :class:`NoHealthyBackend` when no backend is left to try. A pick that raises
        counts nothing in flight, even when an event listener raised (see :meth:`subscribe`).
        """
        try:
            with self._lock:
                if self._deferred:
                    self._apply_deferred()
                if self._health.any_ejected:
                    self._expire(self._timer())
                members = self._all if self._panic else self._healthy
                excluded = self._exclude_states(exclude, members) if exclude else _NONE
                if len(excluded) >= len(members.states):
                    members, excluded = self._widen(members, excluded, exclude)   # or raises
                state = self._policy.pick(members, key, excluded)
                state.in_flight += 1
                self._policy.started(state)
                if self._events:
                    self._post()
        except BaseException:
            if self._outbox:
                self._deliver()     # this call's upkeep events go out all the same
            raise
        if self._outbox:
            try:
                self._deliver()
            except BaseException:
                # A listener raised (a cancellation, an interrupt): the caller never gets
                # this backend, so it must not stay in flight (and no listener runs again).
                self.release_later(state.backend)
                raise
        return state.backend

    def _expire(self, now: float) -> None:
        returned = self._health.expire(now)
        if returned:
            self._refresh(returned=returned)

    def _widen(self, members: Members, excluded: frozenset[BackendState],
               exclude: Collection[Backend | str]) -> tuple[Members, frozenset[BackendState]]:
        """Every eligible backend is excluded: fall back to the ejected ones not excluded
        (panic for this pick), or raise :class:`NoHealthyBackend`."""
        if not self._states:
            error = NoHealthyBackend("the pool has no backends")
        else:
            if members is self._healthy and len(excluded) < len(self._all.states):
                members = self._all      # the healthy ones are all tried: panic for this pick
                excluded = self._exclude_states(exclude, members)
                if len(excluded) < len(members.states):
                    return members, excluded
            tried = sorted(b.url if isinstance(b, Backend) else b for b in exclude)
            error = NoHealthyBackend(f"every backend was tried: {', '.join(tried)}")
        self._post()                 # this call's upkeep events go out all the same
        raise error

    def _exclude_states(self, exclude: Collection[Backend | str],
                        members: Members) -> frozenset[BackendState]:
        states = (self._states.get(b.url if isinstance(b, Backend) else b) for b in exclude)
        return frozenset(s for s in states if s is not None and s in members)

    def report(self, backend: Backend, ok: bool = True, latency: float | None = None) -> None:
        """End one pick of ``backend``: its outcome feeds health and latency.

        ``ok=False`` is a failure (counts towards ejection; for ``latency`` it counts as a
        slow sample). ``latency`` is the time to the response head, in seconds.
        """
        with self._lock:
            if self._deferred:
                self._apply_deferred()
            self._report(backend, ok, latency)
            if self._events:
                self._post()
        if self._outbox:
            self._deliver()

    def report_later(self, backend: Backend, ok: bool = True,
                     latency: float | None = None) -> None:
        """:meth:`report` for finalizers and callbacks that a garbage collection may run,
        perhaps while this thread holds the lock (a collection inside :meth:`pick`): it never
        waits for the lock and never runs an event listener (the code that dropped the
        object may hold a lock a listener takes). Applied at once if the lock is free, else
        by the next call; the events it causes go out with the next call that delivers
        (pick, report, release, update, stats)."""
        self._deferred.append((backend, ok, latency))
        self._apply_later()

    def _apply_later(self) -> None:
        """Apply the deferred ends now if the lock is free (else the next call does); post
        their events, deliver none."""
        if self._lock.acquire(blocking=False):
            try:
                self._apply_deferred()
                self._post()
            finally:
                self._lock.release()

    def _apply_deferred(self) -> None:
        deferred = self._deferred
        while deferred:
            backend, ok, latency = deferred.popleft()
            if ok is None:
                self._finish(backend)           # release_later(): no outcome
            else:
                self._report(backend, ok, latency)

    def _report(self, backend: Backend, ok: bool, latency: float | None) -> None:
        url = backend.url
        state = self._states.get(url)
        member = state is not None
        if state is None:
            state = self._retired.get(url)
            if state is None:
                return          # removed, and its last request already ended
        if state.in_flight > 0:
            state.in_flight -= 1
            self._policy.finished(state)
            if not member and not state.in_flight:
                del self._retired[url]
        now = self._timer()
        state.requests += 1
        if ok:
            if latency is not None:
                self._load.observe(state.latency, latency, now)
            if not member or state.health.steady:
                return          # a success of a steady backend (or a removed one) changes nothing
            returned = self._health.success(state, now, latency, self._panic)
            if returned is not None:                      # it ended a full outage
                self._refresh(answered_by=backend, returned=returned)
        else:
            self._load.observe_failure(state.latency, now, state.health.consecutive_failures)
            if member:
                state.failures += 1
                if self._health.failure(state, now, latency):
                    self._refresh()

    def release(self, backend: Backend) -> None:
        """End one pick of ``backend`` with no outcome (the caller gave up or was cancelled).

        Never waits for the lock: a release has no outcome, only an in-flight count to
        lower, so when the lock is taken (by another thread, or by this one: a garbage
        collection inside a pick closing a lost request's coroutine) it is left to the next
        call, which applies it before it reads anything. It cannot deadlock, wherever it
        runs. From a finalizer, prefer :meth:`release_later`, which also runs no listener.
        """
        lock = self._lock
        if not lock.acquire(blocking=False):
            self.release_later(backend)
            return
        try:
            if self._deferred:
                self._apply_deferred()
            self._finish(backend)
            if self._events:
                self._post()
        finally:
            lock.release()
        if self._outbox:
            self._deliver()

    def _finish(self, backend: Backend) -> BackendState | None:
        url = backend.url
        state = self._states.get(url)
        if state is None:
            state = self._retired.get(url)
            if state is None:
                return None       # removed, and its last request already ended
        if state.in_flight > 0:
            state.in_flight -= 1
            self._policy.finished(state)
            if not state.in_flight and url in self._retired:
                del self._retired[url]
        return state

    @contextlib.contextmanager
    def attempt(self, key: str | None = None,
                exclude: Collection[Backend] = ()) -> Iterator[Backend]:
        """Pick, run the block, report: an exception in the block is a failure.

        The latency reported is the block's duration. A cancellation (``KeyboardInterrupt``,
        ``asyncio.CancelledError``) ends the pick without an outcome, and so does a block
        never left that a garbage collection closes (on the lock-free path). Built on
        :meth:`begin`: the pick ends exactly once, through its completion handle, whose
        context manager holds these rules (docs/contract.md, "Failures").
        """
        with self.begin(key=key, exclude=exclude) as completion:
            start = self._timer()
            yield completion.backend
            completion.done(Outcome(ok=True, latency=self._timer() - start))

    def release_later(self, backend: Backend) -> None:
        """:meth:`release` for finalizers (see :meth:`report_later`): never waits for the
        lock, never runs a listener. How a :class:`~lbmiddleware.core.attempts.Completion`
        dropped without an end, or closed by ``GeneratorExit``, is released."""
        self._deferred.append((backend, None, None))
        self._apply_later()

    def begin(self, key: str | None = None, exclude: Collection[Backend] = ()) -> Completion:
        """:meth:`pick`, as a completion handle that ends exactly once: ``done(outcome)``
        reports, ``release()`` does not, a second end is ignored, and a handle dropped
        without an end is released (tower's completion handle). The attempt loop of every
        front-end (:class:`~lbmiddleware.core.attempts.Attempts`) picks through this."""
        return Completion(self, self.pick(key, exclude))

    # -- introspection ------------------------------------------------------------------

    def lookup(self, key: str) -> Backend:
        """The backend that owns ``key`` now: the one ``pick(key=key)`` would return (among
        the healthy members; among all of them in panic), without a pick: nothing is counted
        in flight, no policy state moves, no event is sent. An ejection whose time is over
        counts as over, as it would for a pick.

        Only a keyed policy has owners: for ``ip_hash`` this is the key's home or, while the
        home is ejected, its fallback. Any other policy raises :class:`ConfigError` naming it;
        an empty pool raises :class:`NoHealthyBackend`.
        """
        policy = self._policy
        if not policy.keyed:
            raise ConfigError(
                f"lookup() needs a keyed policy (ip_hash); this pool uses {self.policy}")
        with self._lock:
            if not self._states:
                raise NoHealthyBackend("the pool has no backends")
            return policy.lookup(self._members_at(self._timer()), key).backend

    def _members_at(self, now: float) -> Members:
        """The members a pick at ``now`` would choose from, changing nothing."""
        if not self._health.due(now):
            return self._all if self._panic else self._healthy
        # Some ejection is over; a pick would end it first. A throwaway snapshot
        # (generation -1: no policy may cache it).
        usable = tuple(s for s in self._states.values()
                       if s.health.ejected_until is None or s.health.ejected_until <= now)
        return Members(usable, -1)

    def stats(self) -> list[dict[str, Any]]:
        """Per backend, in listed order: url, weight, state, ejected_until, in_flight,
        requests, failures, consecutive_failures, ejections, latency (seconds or None)."""
        with self._lock:
            if self._deferred:
                self._apply_deferred()
            now = self._timer()
            if self._health.any_ejected:
                self._expire(now)
            rows = []
            for state in self._states.values():
                health = state.health
                if health.ejected_until is not None:
                    status = "ejected"
                elif health.probation:
                    status = "probation"
                else:
                    status = "healthy"
                estimate = state.latency
                latency = self._load.estimate(estimate, now) if estimate.rtt is not None else None
                rows.append({
                    "url": state.backend.url,
                    "weight": state.weight,
                    "state": status,
                    "ejected_until": health.ejected_until,
                    "in_flight": state.in_flight,
                    "requests": state.requests,
                    "failures": state.failures,
                    "consecutive_failures": health.consecutive_failures,
                    "ejections": health.ejections,
                    "latency": latency,
                })
            self._post()
        self._deliver()
        return rows

    def __repr__(self) -> str:
        return (f"<Balancer policy={self.settings.policy!r} "
                f"backends={[s.backend.url for s in self._states.values()]!r}>")
