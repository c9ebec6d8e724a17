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
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping

from .backend import Backend, parse_backends
from .settings import Settings
from ..errors import NoHealthyBackend
from .health import PassiveHealth
from .load import PeakEwma
from .policies import Policy, make_policy
from .state import BackendState, Members

__all__ = ["Balancer"]


def _write(logs: list[tuple[int, str, tuple]]) -> None:
    for level, message, args in logs:
        logger.log(level, message, *args)

_NONE: frozenset = frozenset()

logger = logging.getLogger("lbmiddleware")


class Balancer:
    """Chooses a backend per request and learns from each outcome.

    ::

        pool = Balancer(["http://10.0.0.1:8080", Backend("http://10.0.0.2:8080", weight=3)],
                        policy="ip_hash", max_fails=3, fail_timeout=10.0)
        backend = pool.pick(key="203.0.113.7")
        pool.report(backend, ok=True, latency=0.012)

    Keyword arguments are the fields of :class:`~lbmiddleware.config.Settings`; pass
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
        if settings is None:
            if backends is not None:
                options["backends"] = backends
            if policy is not None:
                options["policy"] = policy
            settings = Settings(**options)
        elif backends is not None or policy is not None or options:
            settings = settings.replace(
                **options, **({"backends": backends} if backends is not None else {}),
                **({"policy": policy} if policy is not None else {}))
        self.settings = settings
        self._timer = timer
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._health = PassiveHealth(settings.max_fails, settings.fail_timeout,
                                     settings.max_ejection_time)
        self._load = PeakEwma()
        self._policy: Policy = make_policy(settings.policy, self._rng, timer, self._load)
        self._states: dict[str, BackendState] = {}      # url -> state, listed order
        self._retired: dict[str, BackendState] = {}     # removed, requests still in flight
        self._deferred: collections.deque = collections.deque()   # see report_later()
        self._generation = 0
        self._healthy = self._all = Members((), 0)
        self._panic = False
        self._apply_membership(settings.backends)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 timer: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, **overrides: Any) -> "Balancer":
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
        (every pick then raises :class:`NoHealthyBackend`).
        """
        new = parse_backends(backends, allow_empty=True)
        prepared = self._policy.prepare(new)      # slow part (a hash table) outside the lock
        with self._lock:
            self._apply_membership(new, prepared)
            logs = self._take_logs() if self._health.log else None
        if logs:
            _write(logs)

    def _apply_membership(self, backends: tuple[Backend, ...], prepared: Any = None) -> None:
        old = self._states
        states: dict[str, BackendState] = {}
        for backend in backends:
            state = old.get(backend.url) or self._retired.pop(backend.url, None)
            if state is None:
                state = BackendState(backend)
                state.in_rotation_since = self._timer()
            else:
                state.backend = backend
                state.weight = backend.weight
            states[backend.url] = state
        for url, state in old.items():
            if url not in states:
                self._health.forget(state)
                if state.in_flight:
                    self._retired[url] = state
        self._states = states
        self._policy.membership_changed(tuple(states.values()), prepared)
        self._refresh()

    def _refresh(self) -> None:
        """Rebuild the member snapshots after a change of membership or health."""
        self._generation += 1
        everyone = tuple(self._states.values())
        self._all = Members(everyone, self._generation)
        self._healthy = Members(tuple(s for s in everyone if s.ejected_until is None),
                                self._generation)
        panic = bool(everyone) and not self._healthy.states
        if panic and not self._panic:
            self._health.log.append((logging.WARNING,
                                     "every backend is ejected: panic mode, picking among all %d",
                                     (len(everyone),)))
        self._panic = panic

    # -- pick and report ----------------------------------------------------------------

    def pick(self, key: str | None = None, exclude: Collection[Backend] = ()) -> Backend:
        """Choose a backend and count the request in flight; end it with :meth:`report`.

        ``key`` is the sticky key for ``ip_hash`` (ignored by the other policies);
        ``exclude`` lists backends already tried for this request. Raises
        :class:`NoHealthyBackend` when no backend is left to try.
        """
        with self._lock:
            if self._deferred:
                self._apply_deferred()
            health = self._health
            if health.any_ejected and health.expire(self._timer()):
                self._refresh()
            members = self._all if self._panic else self._healthy
            excluded = self._exclude_states(exclude, members) if exclude else _NONE
            if len(excluded) >= len(members.states):
                if not self._states:
                    raise NoHealthyBackend("the pool has no backends")
                if members is self._healthy and len(excluded) < len(self._all.states):
                    members = self._all      # the healthy ones are all tried: panic for this pick
                    excluded = self._exclude_states(exclude, members)
                if len(excluded) >= len(members.states):
                    tried = sorted(getattr(b, "url", b) for b in exclude)
                    raise NoHealthyBackend(f"every backend was tried: {', '.join(tried)}")
            state = self._policy.pick(members, key, excluded)
            state.in_flight += 1
            state.load_version += 1
            self._policy.started(state)
            logs = self._take_logs() if self._health.log else None
        if logs:
            _write(logs)
        return state.backend

    def _exclude_states(self, exclude: Collection[Backend], members: Members) -> frozenset:
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
            logs = self._take_logs() if self._health.log else None
        if logs:
            _write(logs)

    def report_later(self, backend: Backend, ok: bool = True,
                     latency: float | None = None) -> None:
        """:meth:`report` that never waits for the lock: for finalizers and callbacks that
        may run while this thread already holds it (a garbage collection inside
        :meth:`pick`). Applied at once if the lock is free, else by the next call."""
        self._deferred.append((backend, ok, latency))
        if self._lock.acquire(blocking=False):
            try:
                self._apply_deferred()
                logs = self._take_logs() if self._health.log else None
            finally:
                self._lock.release()
            if logs:
                _write(logs)

    def _take_logs(self) -> list[tuple[int, str, tuple]]:
        """The log lines queued under the lock, to write once it is released."""
        logs, self._health.log = self._health.log, []
        return logs

    def _apply_deferred(self) -> None:
        deferred = self._deferred
        while deferred:
            self._report(*deferred.popleft())

    def _report(self, backend: Backend, ok: bool, latency: float | None) -> None:
        url = backend.url
        state = self._states.get(url)
        member = state is not None
        if not member:
            state = self._retired.get(url)
            if state is None:
                return          # removed, and its last request already ended
        if state.in_flight > 0:
            state.in_flight -= 1
            state.load_version += 1
            self._policy.finished(state)
            if not member and not state.in_flight:
                del self._retired[url]
        now = self._timer()
        state.requests += 1
        if ok:
            if latency is not None:
                self._load.observe(state, latency, now)
            if not member:
                return                  # removed from the pool: its health no longer matters
            if state.ejected_until is not None and self._panic:
                self._health.restore_all(state, now)      # the full outage is over
                self._refresh()
            elif state.consecutive_failures or state.probation:
                self._health.success(state, now, latency)
        else:
            self._load.observe_failure(state, now)
            if member and self._health.failure(state, now, latency):
                self._refresh()

    def release(self, backend: Backend) -> None:
        """End one pick of ``backend`` with no outcome (the caller gave up or was cancelled)."""
        with self._lock:
            if self._deferred:
                self._apply_deferred()
            self._finish(backend)

    def _finish(self, backend: Backend) -> BackendState | None:
        url = backend.url
        state = self._states.get(url)
        if state is None:
            state = self._retired.get(url)
            if state is None:
                return None       # removed, and its last request already ended
        if state.in_flight > 0:
            state.in_flight -= 1
            state.load_version += 1
            self._policy.finished(state)
            if not state.in_flight and url in self._retired:
                del self._retired[url]
        return state

    @contextlib.contextmanager
    def attempt(self, key: str | None = None,
                exclude: Collection[Backend] = ()) -> Iterator[Backend]:
        """Pick, run the block, report: an exception in the block is a failure.

        The latency reported is the block's duration. A cancellation (``KeyboardInterrupt``,
        ``asyncio.CancelledError``) ends the pick without an outcome.
        """
        backend = self.pick(key=key, exclude=exclude)
        start = self._timer()
        try:
            yield backend
        except Exception:
            self.report(backend, ok=False)
            raise
        except BaseException:
            self.release(backend)
            raise
        self.report(backend, ok=True, latency=self._timer() - start)

    # -- introspection ------------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        """Per backend, in listed order: url, weight, state, ejected_until, in_flight,
        requests, failures, consecutive_failures, ejections, latency (seconds or None)."""
        with self._lock:
            if self._deferred:
                self._apply_deferred()
            now = self._timer()
            if self._health.any_ejected and self._health.expire(now):
                self._refresh()
            rows = []
            for state in self._states.values():
                if state.ejected_until is not None:
                    status = "ejected"
                elif state.probation:
                    status = "probation"
                else:
                    status = "healthy"
                latency = self._load.estimate(state, now) if state.rtt is not None else None
                rows.append({
                    "url": state.backend.url,
                    "weight": state.weight,
                    "state": status,
                    "ejected_until": state.ejected_until,
                    "in_flight": state.in_flight,
                    "requests": state.requests,
                    "failures": state.failures,
                    "consecutive_failures": state.consecutive_failures,
                    "ejections": state.ejections,
                    "latency": latency,
                })
            logs = self._take_logs() if self._health.log else None
        if logs:
            _write(logs)
        return rows

    def __repr__(self) -> str:
        return (f"<Balancer policy={self.settings.policy!r} "
                f"backends={[s.backend.url for s in self._states.values()]!r}>")
