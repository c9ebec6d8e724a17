"""Balancer: backends + policy + passive and active health, behind pick/report and a
context manager; membership from static entries and sources, drain, slow start and tiers.

Every public method takes one short lock (no I/O, no waiting under it), so one Balancer
is shared safely by threads and by asyncio tasks. Nothing here runs on its own: time-based
changes (an ejection's end, a drain's timeout, a slow start's next step) are made by the
next call that finds them due, on the injected ``timer``.

A server whose requests all run on one event loop owns the pool instead (:meth:`Balancer.own`):
its :class:`~.lane.Lane` (:mod:`.lane`) picks and reports without the lock, and every other
thread's call is handed to that loop (:mod:`.owner`). Both paths run the same steps (``_take``,
``_report_now``, ``_release_now``): only the lock and who may call differ.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from ..errors import ConfigError, NoHealthyBackend
from .attempts import Completion, Outcome
from .backend import Backend, Source, parse_backends
from .entries import Entries
from .events import (
    BackendDown,
    BackendEjected,
    BackendReturned,
    BackendUp,
    DrainEnded,
    DrainStarted,
    Event,
    Listener,
    MembershipChanged,
    PanicEnded,
    PanicStarted,
    ProbationPassed,
    ReturnCause,
    SourceFailed,
    SourceRecovered,
    log_event,
)
from .health import PassiveHealth
from .health.active import ActiveHealth, ActiveRecord
from .incarnations import RETIRED_OBJECTS, Retired
from .lane import Lane
from .load import FOLD_BATCH, FOLD_STEP, PeakEwma, fold_latencies
from .owner import Elsewhere, Owner, OwnerLoop, handed_over
from .policies import Policy, make_policy
from .policies.tiered import Tiered
from .retry_budget import RetryBudget
from .settings import Settings, resolve
from .slow_start import ramp_factor
from .state import BackendState, Members
from .stats import backend_row
from .sticky import sticky_value

__all__ = ["Balancer", "Lane"]

_NONE: frozenset[BackendState] = frozenset()

#: During a slow start every member's policy weight is in hundredths of its weight, so that a
#: ramping backend's share has whole numbers at 1% steps.
SLOW_START_SCALE = 100
#: A slow start's effective weights are recomputed at most this often (seconds): each new set
#: of weights makes the policies rebuild what they cached.
SLOW_START_STEP = 1.0

logger = logging.getLogger("lbmiddleware")


def _url(backend: Backend | str) -> str:
    """A backend's URL as the pool spells it."""
    return backend.url if isinstance(backend, Backend) else Backend(backend).url


def _fold(state: BackendState, now: float) -> None:
    """Count ``state``'s batch of answered latencies (taken since ``batch_from``) into its
    histogram, sum and answered mean, and start the next batch at ``now``."""
    answers = state.answers
    step = FOLD_STEP
    if answers:
        count = len(answers)
        total = fold_latencies(state.latency_counts, answers)
        state.latency_sum += total
        state.answered.add(total, count, state.batch_from)
        if count > FOLD_BATCH:              # a busy backend: keep its batches near FOLD_BATCH
            step *= FOLD_BATCH / count
    state.batch_from = now
    state.fold_at = now + step


def _joining(state: BackendState) -> bool:
    """True for a member that joined later and has not been up since (active health)."""
    record = state.active
    return record is not None and record.joining


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

    This is the core's Balancer: it does no I/O, so the sets of its sources come in through
    ``update(backends, source=...)`` and the probes' results through :meth:`report_probe`;
    the public ``lb.Balancer`` (:mod:`lbmiddleware.fleet`) runs the watchers and the prober
    that call them. The rules of membership, drain, tiers, slow start and active health are
    SEMANTICS part two; a pool with one tier, no health checks and no slow start picks at
    the cost it always had.
    """

    def __init__(
        self,
        backends: Iterable[str | Backend | Source] | str | None = None,
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
                                     settings.max_ejection_time, self._health_event)
        self._active = (ActiveHealth(settings.health_check_rise, settings.health_check_fall,
                                     self._health_event) if settings.health_check else None)
        self._load = PeakEwma()
        self._base_policy: Policy = self._make_policy()
        # The bandwidth policy counts each attempt's bytes (Policy.transferred).
        self._counts_bytes = self._base_policy.counts_bytes
        # One retry budget per Balancer, spent by every front-end on it (None: off).
        self._budget = (RetryBudget(settings.retry_budget, settings.retry_budget_min_per_second,
                                    settings.retry_budget_ttl)
                        if math.isfinite(settings.retry_budget) else None)
        # Every pick needs the time (the policy's, latency and bandwidth: needs_time; the
        # budget's deposit): it reads the timer once for all of them.
        self._pick_time = self._base_policy.needs_time or self._budget is not None
        # A sticky cookie's value -> the member it names (rebuilt with the membership).
        self._by_cookie: dict[str, BackendState] = {}
        self._policy: Policy = self._base_policy
        # Whether the policy's started() and finished() do anything (Policy.follows_flight).
        self._follows = self._policy.follows_flight
        self._tiered: Tiered | None = None
        # Slow start never applies to ip_hash: a growing weight would move sticky keys.
        self._slow_start = settings.slow_start if settings.policy != "ip_hash" else 0.0
        self._states: dict[str, BackendState] = {}      # url -> state, listed order
        self._draining: dict[str, BackendState] = {}    # url -> state, no new picks
        # Their states while an entry lists them: ip_hash keeps them in its table (their keys
        # move as if ejected and come back on undrain()); undrain() takes them back.
        self._kept: dict[str, BackendState] = {}
        # The Backend objects picks of ended incarnations returned (their late ends).
        self._retired = Retired()
        self._keyed = self._base_policy.keyed
        self._table_now: tuple[BackendState, ...] = ()  # what the policy holds (_table())
        # Each entry's backends: the static list (key None) first, then each source by its
        # URL in settings order (others in the order they first update); what drain()
        # holds out; the sources that have not answered yet, and those failing.
        self._entries = Entries(settings.static_backends,
                                (source.url for source in settings.sources))
        # (backend, ok (None: a release), latency, bytes sent, bytes received, status)
        self._deferred: collections.deque[
            tuple[Backend, bool | None, float | None, int, int, int | None]] = (
            collections.deque())                        # see report_later(), release()
        self._generation = 0
        self._healthy = self._all = Members((), 0)
        self._panic = False
        self._panic_since: float | None = None      # timer reading when the panic began
        self._retries = 0                           # picks with an exclude: retries' picks
        # The thread (and loop) that owns the pool, None while every thread takes the lock
        # (own()): set holding the lock, read holding it by every other thread's call
        # (_mine), cleared when ownership ends (_disowned).
        self._owner: Owner | None = None
        self._lane: Lane | None = None
        # Something changes with time (an ejection, a drain, a slow start): each call looks.
        self._timed = False
        self._ramping = False
        self._ramp_next = 0.0
        self._drain_next = 0.0
        self._apply_membership(self._entries.union()[0], joined_later=False)
        self._events.clear()         # the first members are no change: nobody listens yet

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 timer: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, **overrides: Any) -> Balancer:
        """A Balancer from ``LB_*`` variables (``environ`` for tests); keyword arguments win."""
        return cls(settings=Settings.from_env(environ, **overrides), timer=timer, rng=rng)

    #: True once :meth:`close` was called: what watches the pool from beside it (the status
    #: page's history, lbmiddleware.observe) stops then.
    closed = False

    def close(self) -> None:
        """Stop what runs for this pool. The core runs nothing (the public ``lb.Balancer``
        stops its sources and probes here); idempotent."""
        self.closed = True

    def __enter__(self) -> Balancer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- ownership: one loop's thread picks without the lock --------------------------------

    def own(self, loop: OwnerLoop) -> Lane:
        """Make the calling thread, which runs ``loop`` (an asyncio or uvloop loop), the
        pool's owner, and return its :class:`Lane`: lock-free pick, report, release and
        begin for that thread, taking the caller's clock reading (``now=``).

        For a server whose requests all run on that loop (the gateway's fast path). From now
        on every call of another thread that reads or changes the pool (a source's update(),
        a probe's report_probe(), the admin listener's stats(), a drain()...) is handed to
        ``loop`` and runs there between two of its callbacks, its caller waiting for the
        result: the same results, exceptions and events, the events delivered on the owner
        thread (:mod:`.owner`). The pool's own methods still work on the owner thread,
        through the lock. Never block the owner thread waiting for a thread that may call
        the pool (it would wait for you in turn).

        Again on the same thread and loop: the same lane. While another thread or loop owns
        the pool: ``RuntimeError``. Ownership ends with :meth:`disown`, or when ``loop`` is
        closed (a waiting caller then runs the queued calls itself)."""
        with self._lock:
            owner, lane = self._owner, self._lane
            if owner is None or lane is None:
                if self._deferred:
                    self._apply_deferred()
                    self._post()
                self._owner = owner = Owner(loop, self._disowned)
                self._lane = lane = Lane(self, owner)
            elif owner.thread != threading.get_ident() or owner.loop is not loop:
                raise RuntimeError(f"{self!r} is owned by another thread or loop already: "
                                   f"disown() it there first")
        self._deliver()
        return lane

    @property
    def lane(self) -> Lane | None:
        """The owner's :class:`Lane` while the pool is owned (:meth:`own`), else None."""
        return self._lane

    def disown(self) -> None:
        """End the ownership :meth:`own` began (from any thread: it ends on the owner's);
        every thread takes the lock again. The calls handed to the owner and not run yet
        run now, on this thread. Nothing when the pool is not owned."""
        owner = self._owner
        if owner is None:
            return
        if owner.thread != threading.get_ident():
            owner.call(self.disown)
        else:
            owner.end()

    def _disowned(self, owner: Owner) -> None:
        """``owner``'s ownership ended: forget it (one attribute: a thread that reads it set
        hands its call over, and the owner runs it, or it finds ownership over and takes the
        lock)."""
        if self._owner is owner:
            self._owner = None
            self._lane = None

    def _mine(self) -> None:
        """Raise :class:`~.owner.Elsewhere` when another thread owns the pool (call it first thing
        holding the lock, in a method under :func:`handed_over`)."""
        owner = self._owner
        if owner is not None and owner.thread != threading.get_ident():
            raise Elsewhere(owner)

    # -- membership ---------------------------------------------------------------------

    @property
    def policy(self) -> str:
        return self.settings.policy

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The current members, in listed order (draining backends are not members)."""
        with self._lock:
            return tuple(s.backend for s in self._states.values())

    def update(self, backends: Iterable[str | Backend] | str, *,
               source: Source | str | None = None) -> None:
        """Change the membership at runtime.

        Without ``source``, ``backends`` replace the static list; with a :class:`Source` (or
        its text), they replace that source's set (a discovery watcher's answer). The members
        are the union: the static backends first, then each source's in settings order; a
        URL listed by two entries is the first's (a warning, once). Backends that stay keep
        their live state (health, latency, in-flight; a new weight or priority is taken);
        removed ones drain: no new picks, their in-flight requests report normally, and they
        leave when the last one ends or after ``drain_timeout``; sticky keys move close to
        the minimum. An empty list is allowed (every pick then raises
        :class:`NoHealthyBackend` if no other entry has members). Each change sends a
        :class:`~lbmiddleware.core.events.MembershipChanged` event.

        The first answer of a source of the settings (its first update, empty or not) is its
        initial list, as the static list is: its backends are up for active health checks
        and get no slow start. The backends its later answers add join: no traffic before
        their first passing probe, and a slow start. This is per source: a source answering
        late, or again, does not make another's first answer a join. A source not in the
        settings joins the pool with its first answer.

        The same backends with the same weights and priorities, in any order and spelling,
        change nothing (a DNS refresh every few seconds, say): no hash table is rebuilt,
        the round-robin sequence goes on, the listed order stays, no event is sent.
        """
        key = None if source is None else (
            source.url if isinstance(source, Source) else Source(source).url)
        new = parse_backends(backends, allow_empty=True)
        entries = self._entries
        if entries.same(key, new):
            if key in entries.unanswered:       # the same (empty) set: an answer all the same
                self._answered(key)
            return                  # nothing to rebuild, restart or announce
        if key is not None:         # each backend says which entry lists it
            new = tuple(b if b.source is not None else dataclasses.replace(b, source=key)
                        for b in new)
        prepared = None
        if (self._keyed and self._tiered is None
                and all(b.priority == new[0].priority for b in new)):
            # The slow part (a hash table) outside the lock, for the union this would give
            # (a guess: another thread may change it first, and the policy then rebuilds).
            lists = dict(entries.lists)
            lists[key] = new
            prepared = self._policy.prepare(self._table_guess(
                entries.union(lists)[0], lists, joined_later=key not in entries.unanswered))
        self._update(key, new, prepared)

    @handed_over
    def _answered(self, key: str | None) -> None:
        """Source ``key`` answered with the set it had (its first answer all the same)."""
        with self._lock:
            self._mine()
            self._entries.unanswered.discard(key)

    @handed_over
    def _update(self, key: str | None, new: tuple[Backend, ...], prepared: Any) -> None:
        """:meth:`update`'s change, holding the lock (``prepared``: the policy's part made
        without it, a guess)."""
        with self._lock:
            self._mine()
            if self._deferred:
                self._apply_deferred()
            warnings: list[str] = []
            entries = self._entries
            first = key in entries.unanswered
            entries.unanswered.discard(key)
            if not entries.same(key, new):
                entries.replace(key, new)
                union, warnings = entries.union()
                if not self._same_members(union):
                    self._apply_membership(union, prepared, source=key, joined_later=not first)
                elif self._kept and self._unlist_kept():
                    self._policy_members(prepared)      # a held backend left the table
            self._post()
        for warning in warnings:
            logger.warning("%s", warning)
        self._deliver()

    @handed_over
    def drain(self, url: Backend | str) -> None:
        """Take ``url`` out of rotation without errors: no new picks from now on, its
        requests in flight end normally; it leaves when the last one ends or after
        ``drain_timeout`` (:class:`~lbmiddleware.core.events.DrainStarted`, ``DrainEnded``).
        An entry still listing it does not bring it back until :meth:`undrain`. With
        ``ip_hash`` it keeps its place in the hash table meanwhile: its keys move as if it
        were ejected, no other key moves, and its own come back when it is undrained. Draining a
        backend twice changes nothing; a URL that is not in the pool is a
        :class:`ConfigError` naming it."""
        url = _url(url)
        with self._lock:
            self._mine()
            if self._deferred:
                self._apply_deferred()
            held = self._entries.held
            if url not in held:
                self._require_known(url, "drain")
                held[url] = None
                if url in self._states:
                    self._apply_membership(self._entries.union()[0], reason="drain()",
                                           by="drain()")
            self._post()
        self._deliver()

    @handed_over
    def undrain(self, url: Backend | str) -> None:
        """Undo :meth:`drain`: the backend is a member again if an entry still lists it
        (as a backend that joins: active health checks wait for its first pass, slow start
        ramps it up). Undraining a member changes nothing; a URL that is neither drained
        nor in the pool is a :class:`ConfigError` naming it."""
        url = _url(url)
        with self._lock:
            self._mine()
            if self._deferred:
                self._apply_deferred()
            held = self._entries.held
            if url not in held:
                self._require_known(url, "undrain")
            else:
                del held[url]
                union, _ = self._entries.union()
                if not self._same_members(union):
                    self._apply_membership(union, by="undrain()")
            self._post()
        self._deliver()

    def _require_known(self, url: str, call: str) -> None:
        """ConfigError naming ``url`` unless it is a member or draining."""
        if url not in self._states and url not in self._draining:
            raise ConfigError(f"{call}({url!r}): no such backend in the pool")

    def _table_guess(self, union: tuple[Backend, ...],
                     entries: Mapping[str | None, tuple[Backend, ...]],
                     joined_later: bool) -> tuple[Backend, ...]:
        """What :meth:`_table` would give once ``union`` are the members (read without the
        lock; a wrong guess only makes the policy rebuild under it)."""
        states, draining, kept = dict(self._states), dict(self._draining), dict(self._kept)
        checked = self._active is not None
        members: list[Backend] = []
        joining = 0
        for backend in union:
            url = backend.url
            state = states.get(url) or draining.get(url) or kept.get(url)
            if checked and ((state is None and joined_later)
                            or (state is not None and not state.tabled
                                and ((url not in states and joined_later)
                                     or _joining(state)))):
                joining += 1
                continue
            members.append(backend)
        if joining and not members:
            members = list(union)       # a pool of joiners only: they are the table
        urls = {b.url for b in union}
        extra = [s.backend for url, s in draining.items() if url not in urls]
        extra += [s.backend for url, s in states.items() if url not in urls and s.in_flight]
        listed = self._entries.listed(entries)
        extra += [s.backend for url, s in kept.items()
                  if url not in draining and url not in urls and url in listed]
        return (*members, *extra)

    def _same_members(self, backends: tuple[Backend, ...]) -> bool:
        """True when ``backends`` are the members now, with the same values, in any order."""
        states = self._states
        if len(backends) != len(states):
            return False
        for backend in backends:
            state = states.get(backend.url)
            if state is None or state.backend != backend:
                return False
        return True

    def _apply_membership(self, backends: tuple[Backend, ...], prepared: Any = None, *,
                          source: str | None = None, reason: str = "removed",
                          joined_later: bool = True, by: str | None = None) -> None:
        """Make ``backends`` the members. Those added join (``joined_later``) or, at
        construction and in a source's first answer, are initial members. ``by``: the call
        (drain(), undrain()) when not an update, for the event."""
        old = self._states
        now = self._timer()
        states: dict[str, BackendState] = {}
        added, reweighted = [], []
        drains: list[Event] = []
        for backend in backends:
            url = backend.url
            state = old.get(url)
            if state is None:
                added.append(backend)
                kept = self._kept.pop(url, None)
                state = self._draining.pop(url, None)
                if state is not None:       # back before its drain ended: the same member
                    drains.append(DrainEnded(state.backend, False, state.in_flight,
                                             cancelled=True))
                    state.drain_until = None
                    self._hand(state, backend)
                elif kept is not None and not kept.in_flight:
                    state = kept            # undrain(): its state, still in ip_hash's table
                    self._hand(state, backend)
                else:
                    state = BackendState(self._retired.fresh(backend), now)
                self._join(state, now, joined_later)
            else:
                if (state.backend.weight != backend.weight
                        or state.backend.priority != backend.priority):
                    reweighted.append(backend)
                self._hand(state, backend)
            state.source = backend.source
            state.weight = backend.weight
            states[url] = state
        removed = []
        held = self._entries.held
        for url, state in old.items():
            if url not in states:
                removed.append(state.backend)
                self._health.forget(state)
                state.ramp_since = None
                state.ramp = 1.0
                if state.in_flight or reason == "drain()":
                    self._start_drain(state, now, reason, drains)
                if url in held:
                    self._kept[url] = state
        if self._kept:
            self._unlist_kept()
        self._states = states
        if self._slow_start and (self._ramping or added):
            self._ramp(now)
        self._policy_members(prepared)
        self._events.append(MembershipChanged(tuple(added), tuple(removed), tuple(reweighted),
                                              backends, source, by=by))
        self._events.extend(drains)
        self._refresh()             # after the change, the panic it may start or end

    def _unlist_kept(self) -> bool:
        """Forget the held backends no entry lists any more (they leave ip_hash's table);
        True if there were any."""
        listed = self._entries.listed()
        gone = [url for url in self._kept if url not in listed]
        for url in gone:
            del self._kept[url]
        return bool(gone)

    def _join(self, state: BackendState, now: float, joined_later: bool) -> None:
        """A backend becomes a member: an initial one up, one that joins later pending its
        first probe. One that joins later starts its slow start now, or, with active checks,
        when its first pass brings it up (:meth:`report_probe`): not while it waits."""
        state.changed_at = now
        active = self._active
        if active is not None:
            if state.active is None:
                state.active = ActiveRecord()
            active.start(state.active, state.backend, joined_later=joined_later)
        elif joined_later and self._slow_start:
            state.ramp_since = now

    def _hand(self, state: BackendState, backend: Backend) -> None:
        """From now on picks of ``state`` return ``backend`` (a new weight, say); the object
        it replaces is remembered while requests picked with it may still be in flight."""
        old = state.backend
        if old is backend or (old == backend and old.source == backend.source):
            return                  # the same values: picks go on returning the same object
        if state.in_flight:
            state.former = (*state.former[1 - RETIRED_OBJECTS:], old)
        else:
            state.former = ()
        state.backend = self._retired.fresh(backend)

    def _start_drain(self, state: BackendState, now: float, reason: str,
                     events: list[Event]) -> None:
        """``state`` left the members: it drains (no new picks) until its requests in
        flight end or ``drain_timeout`` runs out. Its events go to ``events``."""
        events.append(DrainStarted(state.backend, state.in_flight, reason))
        state.changed_at = now
        timeout = self.settings.drain_timeout
        if not state.in_flight or not timeout:
            events.append(DrainEnded(state.backend, bool(state.in_flight), state.in_flight))
            if state.in_flight:
                self._retired.retire(state)
            return
        state.drain_until = until = now + timeout
        url = state.backend.url
        self._draining.pop(url, None)
        self._draining[url] = state
        if len(self._draining) == 1 or until < self._drain_next:
            self._drain_next = until
        self._timed = True

    def _end_drains(self, now: float) -> None:
        """End the drains whose timeout is over (their late ends are then ignored)."""
        upcoming = None
        for url, state in list(self._draining.items()):
            until = state.drain_until
            if until is not None and until <= now:
                del self._draining[url]
                state.drain_until = None
                self._events.append(DrainEnded(state.backend, True, state.in_flight))
                self._retired.retire(state)
            elif until is not None and (upcoming is None or until < upcoming):
                upcoming = until
        if upcoming is not None:
            self._drain_next = upcoming

    def _drained(self, url: str, state: BackendState) -> None:
        """A draining backend's last request ended: it leaves."""
        del self._draining[url]
        state.drain_until = None
        self._events.append(DrainEnded(state.backend, False, 0))

    def _table(self, passing: BackendState | None = None) -> tuple[BackendState, ...]:
        """The backends the policy holds: the members, then the draining backends, whose
        sticky keys move as if ejected. For ip_hash (the one policy with a table) also the
        backends drain() holds out while an entry lists them (their keys come back when
        undrained), and not the members that joined and have not been up yet (active
        health), unless no other member is left: no key moves for a backend that may never
        serve. ``passing``: as if that joiner were up (a guess made without the lock)."""
        members = tuple(self._states.values())
        if not self._keyed:
            return (*members, *self._draining.values())
        if self._active is not None:
            tabled = tuple(s for s in members
                           if s.tabled or s is passing or not _joining(s))
            if tabled:
                members = tabled
        draining = dict(self._draining)         # copies: a guess reads without the lock
        kept = [s for url, s in list(self._kept.items()) if url not in draining]
        return (*members, *draining.values(), *kept)

    def _policy_members(self, prepared: Any = None) -> None:
        """Tell the policy (one instance per tier when there are several) its members:
        :meth:`_table`."""
        self._table_now = table = self._table()
        for state in table:
            state.tabled = True
        secret = self.settings.sticky_cookie_secret
        self._by_cookie = {sticky_value(url, secret): state
                           for url, state in self._states.items()}
        priorities = {s.backend.priority for s in table}
        if len(priorities) > 1:
            if self._tiered is None:
                self._tiered = Tiered(self._base_policy, self._make_policy,
                                      self.settings.overprovisioning)
                self._policy = self._tiered
                self._follows = True
            self._tiered.membership_changed(table)
        else:
            if self._tiered is not None:
                self._tiered = None
                self._policy = self._base_policy
                self._follows = self._policy.follows_flight
            self._base_policy.membership_changed(table, prepared)

    def _make_policy(self) -> Policy:
        return make_policy(self.settings.policy, self._rng, self._timer, self._load,
                           hash_balance_factor=self.settings.hash_balance_factor)

    def _refresh(self, answered_by: Backend | None = None,
                 returned: tuple[Backend, ...] = (), carry: bool = False) -> None:
        """Rebuild the member snapshots after a change of membership, health or weights;
        ``answered_by`` and ``returned`` say what ended an ejection (for the event if panic
        ends); ``carry``: only weights changed."""
        # Two generations: the policies cache what they derive per generation, and a retry
        # that widens to every member (_widen) picks from _all while other picks use
        # _healthy: the two snapshots must never pass for one another.
        self._generation += 2
        everyone = tuple(self._states.values())
        self._all = Members(everyone, self._generation - 1, carry)
        usable = self._usable(everyone)
        self._healthy = Members(usable, self._generation, carry)
        if self._tiered is not None:
            self._tiered.refresh(self._all, self._healthy)
        panic = bool(everyone) and not usable
        if panic != self._panic:
            self._panic = panic
            self._panic_since = self._timer() if panic else None
            if panic:
                self._events.append(self._panic_started(everyone))
            else:
                states = self._states
                down = tuple(b for b in returned if b.url in states
                             and self._still_down(states[b.url]) is not None)
                self._events.append(PanicEnded(answered_by, returned, still_down=down))

    def _usable(self, everyone: tuple[BackendState, ...],
                now: float | None = None) -> tuple[BackendState, ...]:
        """The members a pick may choose: not ejected (by ``now``, if given: an ejection
        whose time is over counts as over) and, with active health, up. A pool whose
        members all joined and wait for their first probe picks among those (not a panic:
        nothing was seen to fail); once any member is not pending, no such fallback: with
        none usable, the pool panics over all of them (SEMANTICS part two)."""
        if now is None:
            usable = tuple(s for s in everyone if s.health.ejected_until is None
                           and (s.active is None or s.active.up))
        else:
            usable = tuple(s for s in everyone if (s.health.ejected_until is None
                                                   or s.health.ejected_until <= now)
                           and (s.active is None or s.active.up))
        if usable or self._active is None:
            return usable
        if not all(s.active is not None and s.active.pending for s in everyone):
            return ()
        if now is None:
            return tuple(s for s in everyone if s.health.ejected_until is None)
        return tuple(s for s in everyone
                     if s.health.ejected_until is None or s.health.ejected_until <= now)

    def _still_down(self, state: BackendState) -> str | None:
        """What keeps ``state`` out of rotation once it is not ejected: its active checks'
        word (``"DOWN 0/2"``, ``"pending"``: :meth:`ActiveHealth.why_out`), unless it is
        picked all the same (a pool of joiners only picks among them while they wait for their
        first probes: :meth:`_usable`); None when it is usable."""
        active, record = self._active, state.active
        if active is None or record is None or record.up:
            return None
        if record.pending and all(s.active is not None and s.active.pending
                                  for s in self._states.values()):
            return None
        return active.why_out(record)

    @staticmethod
    def _panic_started(everyone: tuple[BackendState, ...]) -> PanicStarted:
        """The event of a panic over ``everyone``, with why each member is unusable."""
        ejected, down, pending = [], [], []
        for state in everyone:
            record = state.active
            if state.health.ejected_until is not None:
                ejected.append(state.backend)
            elif record is not None and record.pending:
                pending.append(state.backend)
            elif record is not None and not record.up:
                down.append(state.backend)
        return PanicStarted(tuple(s.backend for s in everyone), tuple(ejected), tuple(down),
                            tuple(pending))

    # -- time: ejections, drains, slow start ---------------------------------------------

    def _tick(self, now: float) -> None:
        """Make the changes that are due by ``now`` (call it holding the lock)."""
        health = self._health
        if health.any_ejected and health.due(now):
            self._expire(now)
        if self._draining and now >= self._drain_next:
            self._end_drains(now)
        if self._ramping and now >= self._ramp_next and self._ramp(now):
            self._refresh(carry=True)
        self._timed = health.any_ejected or bool(self._draining) or self._ramping

    def _start_ramp(self, states: Iterable[BackendState], now: float) -> None:
        """Slow start for backends back from an ejection or from active-down, those of them
        that are usable now. Slow start begins when a backend becomes usable (Envoy: when the
        host becomes healthy): one whose ejection ends while its active checks keep it out
        starts when they bring it up, so its window is not spent while it gets no traffic."""
        if not self._slow_start:
            return
        started = False
        for state in states:
            if state.health.ejected_until is None and self._still_down(state) is None:
                state.ramp_since = state.changed_at = now
                started = True
        if started:
            self._ramp(now)

    def _end_ramp(self, state: BackendState, now: float) -> None:
        """``state`` was ejected or went down by its checks: its slow start, if any, is over
        (Envoy: a host that fails its checks leaves slow start). It ramps again from the
        start when it is usable again."""
        if state.ramp_since is None:
            return
        state.ramp_since, state.ramp = None, 1.0
        self._ramp(now)

    def _ramp(self, now: float) -> bool:
        """Recompute the slow starts' effective weights; True when a policy weight changed.
        While any backend ramps, every member's policy weight is in hundredths."""
        window = self._slow_start
        ramping = False
        states = self._states.values()
        for state in states:
            since = state.ramp_since
            if since is not None:
                factor = ramp_factor(now - since, window)
                if factor >= 1.0:
                    state.ramp_since, state.ramp = None, 1.0
                    state.changed_at = max(state.changed_at, since + window)
                else:
                    state.ramp, ramping = factor, True
        changed = False
        for state in states:
            weight = state.backend.weight
            if ramping:
                weight = (max(1, round(weight * SLOW_START_SCALE * state.ramp))
                          if state.ramp_since is not None else weight * SLOW_START_SCALE)
            if state.weight != weight:
                state.weight, changed = weight, True
        self._ramping = ramping
        self._ramp_next = now + SLOW_START_STEP
        if ramping:
            self._timed = True
        return changed

    # -- events -------------------------------------------------------------------------

    def _returned_in_panic(self, queued: int) -> None:
        """An answer in panic ended every ejection, but the panic goes on (the members are
        down by their active checks): no PanicEnded will report the returns queued from
        ``queued`` on, so they are marked to report themselves (``BackendReturned.in_panic``)."""
        events = self._events
        for i in range(queued, len(events)):
            event = events[i]
            if isinstance(event, BackendReturned) and event.cause is ReturnCause.OUTAGE_OVER:
                events[i] = dataclasses.replace(event, in_panic=True)

    def _health_event(self, event: Event) -> None:
        """Queue an event of passive or active health, stamping its backend's change of
        state with when it happened (a return by time up: when the time was up). A return
        says whether active health keeps the backend out all the same (``still_down``)."""
        if not isinstance(event, (BackendEjected, BackendReturned, ProbationPassed, BackendUp,
                                  BackendDown)):
            self._events.append(event)
            return
        state = self._states.get(event.backend.url)
        if state is None:
            self._events.append(event)
            return
        if isinstance(event, BackendReturned) and state.active is not None:
            still_down = self._still_down(state)
            if still_down is not None:
                event = dataclasses.replace(event, still_down=still_down)
        self._events.append(event)
        if isinstance(event, BackendEjected):
            state.changed_at = event.until - event.duration
        elif isinstance(event, BackendReturned):
            state.changed_at = state.health.in_rotation_since
        elif isinstance(event, ProbationPassed) or state.active is None:
            state.changed_at = self._timer()
        else:
            checked_at = state.active.checked_at
            state.changed_at = checked_at if checked_at is not None else self._timer()

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

    def pick(self, key: str | None = None, exclude: Collection[Backend | str] = (),
             prefer: str | None = None, now: float | None = None) -> Backend:
        """Choose a backend and count the request in flight; end it with :meth:`report`.

        ``key`` is the sticky key for ``ip_hash`` (ignored by the other policies);
        ``exclude`` lists backends already tried for this request. ``prefer`` is a sticky
        cookie's value (:meth:`sticky_value`): the backend it names is chosen, whatever the
        policy, while a pick may choose it (usable, or any member in a panic; not excluded;
        not draining; in a tier that takes traffic now); otherwise, and for a value that
        names no member, the policy picks as usual. Raises :class:`NoHealthyBackend` when no
        backend is left to try. A pick that raises counts nothing in flight, even when an
        event listener raised (see :meth:`subscribe`).

        A pick without ``exclude`` is a new request: it adds to the retry budget
        (:meth:`spend_retry`); one with ``exclude`` is a retry's.

        ``now``: the timer's reading, taken by the caller (one reading for its whole request);
        None reads the timer when the pick needs the time.
        """
        try:
            with self._lock:
                if self._owner is not None:
                    self._mine()
                state = self._take(key, exclude, prefer, now)
        except Elsewhere as elsewhere:
            return elsewhere.owner.call(self.pick, key, exclude, prefer, now)
        except BaseException:
            if self._outbox:
                self._deliver()     # this call's upkeep events go out all the same
            raise
        if self._outbox:
            self._deliver_pick(state)
        return state.backend

    def _take(self, key: str | None, exclude: Collection[Backend | str], prefer: str | None,
              now: float | None) -> BackendState:
        """:meth:`pick`'s choice, counted in flight, its events posted (holding the lock, or
        on the owner's thread)."""
        if self._deferred:
            self._apply_deferred()
        if self._timed or self._pick_time:
            if now is None:
                now = self._timer()         # once, for everything this pick does
            if self._timed:
                self._tick(now)
        members = self._all if self._panic else self._healthy
        if exclude:
            excluded = self._exclude_states(exclude, members)
            if len(excluded) >= len(members.states):
                members, excluded = self._widen(members, excluded, exclude)   # or raises
        elif members.states:
            excluded = _NONE
        else:
            members, excluded = self._widen(members, _NONE, exclude)          # or raises
        if prefer is None or (state := self._preferred(prefer, members, excluded)) is None:
            state = self._policy.pick(members, key, excluded, now)
        state.in_flight += 1
        if self._follows:
            self._policy.started(state, now)
        if exclude:
            self._retries += 1
        elif self._budget is not None:
            self._budget.deposit(self._timer() if now is None else now)   # (never None here)
        if self._events:
            self._post()
        return state

    def _deliver_pick(self, state: BackendState) -> None:
        """Deliver the events posted, after a pick of ``state``."""
        try:
            self._deliver()
        except BaseException:
            # A listener raised (a cancellation, an interrupt): the caller never gets
            # this backend, so it must not stay in flight (and no listener runs again).
            self.release_later(state.backend)
            raise

    def _preferred(self, value: str, members: Members,
                   excluded: frozenset[BackendState]) -> BackendState | None:
        """The member a sticky cookie's ``value`` names, if a pick among ``members`` may
        choose it now (with tiers: only in a tier that takes traffic, so that a client sent
        to a backup goes back to the primaries when they return)."""
        state = self._by_cookie.get(value)
        if state is None or state not in members.set or state in excluded:
            return None
        tiered = self._tiered
        if tiered is not None and not tiered.prefer(state, members):
            return None
        return state

    def sticky_value(self, backend: Backend | str) -> str:
        """The sticky cookie's value for ``backend``: opaque (not its address), the same in
        every process (:mod:`lbmiddleware.core.sticky`). A front-end sets the cookie to it when
        the backend that answered is not the one the request's cookie named."""
        return sticky_value(_url(backend), self.settings.sticky_cookie_secret)

    @handed_over
    def spend_retry(self, tried: Collection[Backend | str] = ()) -> bool:
        """Spend one retry from the pool's retry budget: True if the budget holds one (or is
        off), False if it is exhausted (counted in ``pool_stats()``). The attempt loop asks
        this before each retry's pick; every front-end on this Balancer shares the budget.

        ``tried``: the backends the request has tried. When they are every member, no retry
        could be made: :class:`NoHealthyBackend` is raised and nothing is spent (a refusal
        for a retry that could not happen anyway is no refusal)."""
        with self._lock:
            self._mine()
            return self._spend(tried)

    def _spend(self, tried: Collection[Backend | str], now: float | None = None) -> bool:
        if tried and len(self._exclude_states(tried, self._all)) >= len(self._all.states):
            raise NoHealthyBackend("every backend was tried: "
                                   + ", ".join(sorted(_url(b) for b in tried)))
        budget = self._budget
        return True if budget is None else budget.try_spend(
            self._timer() if now is None else now)

    @handed_over
    def refund_retry(self, picked: bool = False) -> None:
        """A retry :meth:`spend_retry` allowed was not made after all (no backend was left
        to try; ``picked``: its pick was made and released, as when the deadline left too
        little time for that backend): the budget and the retries' count take it back."""
        with self._lock:
            self._mine()
            self._refund(picked)

    def _refund(self, picked: bool, now: float | None = None) -> None:
        if picked and self._retries:
            self._retries -= 1
        if self._budget is not None:
            self._budget.refund(self._timer() if now is None else now)

    @handed_over
    def usual_latency(self, backend: Backend | str) -> float | None:
        """The time ``backend`` usually takes to answer: the time-decayed mean of its answered
        attempts' latencies (seconds), None before its first answer or for a backend not in
        the pool. The attempt loop reads it to tell whether a deadline leaves time for a
        retry."""
        with self._lock:
            self._mine()
            return self._usual(backend)

    def _usual(self, backend: Backend | str, now: float | None = None) -> float | None:
        url = _url(backend)
        state = self._states.get(url) or self._draining.get(url)
        if state is None:
            return None
        if state.answers:
            _fold(state, self._timer() if now is None else now)
        return state.answered.mean

    def _expire(self, now: float) -> None:
        returned = self._health.expire(now)
        if returned:
            if self._slow_start:
                self._start_ramp((self._states[b.url] for b in returned), now)
            self._refresh(returned=returned)

    def _widen(self, members: Members, excluded: frozenset[BackendState],
               exclude: Collection[Backend | str]) -> tuple[Members, frozenset[BackendState]]:
        """Every eligible backend is excluded: fall back to the ejected ones not excluded
        (panic for this pick), or raise :class:`NoHealthyBackend`."""
        if not self._states:
            error = self._entries.no_backends()
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

    def report(self, backend: Backend, ok: bool = True, latency: float | None = None, *,
               bytes_sent: int = 0, bytes_received: int = 0,
               status: int | None = None, now: float | None = None) -> None:
        """End one pick of ``backend``: its outcome feeds health and latency.

        ``ok=False`` is a failure (counts towards ejection; for ``latency`` it counts as a
        slow sample). ``latency`` is the time to the response head, in seconds.
        ``bytes_sent`` and ``bytes_received``: the request's and response's body bytes, added
        to the backend's totals. ``status``: the response's status, None without a response.
        The latency histogram and the answered latency (``stats()``'s ``latency_*`` and
        ``latency``) take the latencies of the attempts that got a response head: the
        successes and the failures with a status (a 503), never a failure without one
        (refused, timed out), which had no head to time.

        ``now``: the timer's reading at the end, taken by the caller (the one its ``latency``
        came from, say); None reads the timer.
        """
        try:
            with self._lock:
                if self._owner is not None:
                    self._mine()
                self._report_now(backend, ok, latency, bytes_sent, bytes_received, status, now)
        except Elsewhere as elsewhere:
            elsewhere.owner.call(self.report, backend, ok, latency, bytes_sent=bytes_sent,
                                 bytes_received=bytes_received, status=status, now=now)
            return
        if self._outbox:
            self._deliver()

    def report_later(self, backend: Backend, ok: bool = True, latency: float | None = None, *,
                     bytes_sent: int = 0, bytes_received: int = 0,
                     status: int | None = None) -> None:
        """:meth:`report` for finalizers and callbacks that a garbage collection may run,
        perhaps while this thread holds the lock (a collection inside :meth:`pick`): it never
        waits for the lock and never runs an event listener (the code that dropped the
        object may hold a lock a listener takes). Applied at once if the lock is free, else
        by the next call; the events it causes go out with the next call that delivers
        (pick, report, release, update, stats)."""
        self._deferred.append((backend, ok, latency, bytes_sent, bytes_received, status))
        self._apply_later()

    def _apply_later(self) -> None:
        """Apply the deferred ends now if the lock is free (else the next call does); post
        their events, deliver none. An owned pool's owner applies them at its next call
        (this may run inside one of its calls: a garbage collection). The owner is looked at
        again holding the lock: ``own()`` sets it holding the lock, so a pool owned between
        the first look and the lock is left to its owner."""
        if self._owner is None and self._lock.acquire(blocking=False):
            try:
                if self._owner is None:
                    self._apply_deferred()
                    self._post()
            finally:
                self._lock.release()

    def _release_now(self, backend: Backend) -> None:
        """:meth:`release`'s change, as :meth:`_report_now` is :meth:`report`'s."""
        if self._deferred:
            self._apply_deferred()
        self._finish(backend)
        if self._events:
            self._post()

    def _apply_deferred(self) -> None:
        deferred = self._deferred
        while deferred:
            backend, ok, latency, sent, received, status = deferred.popleft()
            if ok is None:
                self._finish(backend)           # release_later(): no outcome
            else:
                self._report_now(backend, ok, latency, sent, received, status, None,
                                 deferred=True)

    def _report_now(self, backend: Backend, ok: bool, latency: float | None, sent: int,
                    received: int, status: int | None, now: float | None,
                    deferred: bool = False) -> None:
        """:meth:`report`'s change, its events posted: holding the lock, or on the owner's
        thread (the :class:`~.lane.Lane`'s report, the same steps). The deferred ends are
        applied first, unless this is one of them (``deferred``: :meth:`_apply_deferred`; not
        keyword-only: a keyword-only default costs a dict lookup per call)."""
        if self._deferred and not deferred:
            self._apply_deferred()
        try:
            url = backend.url
            state = self._states.get(url)
            member = state is not None
            if state is None:
                state = self._draining.get(url)
                if state is None:
                    return          # removed, and its last request already ended
            if backend is not state.backend and self._retired.late(backend):
                return              # an end of an ended incarnation of this URL
            if state.in_flight > 0:
                state.in_flight -= 1
                if self._follows:
                    self._policy.finished(state)
                if not member and not state.in_flight:
                    self._drained(url, state)
            if now is None:
                now = self._timer()
            state.requests += 1
            state.bytes_sent += sent
            state.bytes_received += received
            if self._counts_bytes and (sent or received):
                self._policy.transferred(state, sent + received, now)
            if ok:
                if latency is not None:
                    # An answer's latency waits in a batch (load.fold_latencies: the histogram,
                    # the sum and the answered mean, counted once per batch).
                    if now >= state.fold_at:
                        _fold(state, now)
                    state.answers.append(latency)
                    self._load.observe(state.latency, latency, now)
                if not member or state.health.steady:
                    return      # a success of a steady backend (or a removed one) changes nothing
                queued = len(self._events)
                returned = self._health.success(state, now, latency, self._panic)
                if returned is not None:                      # it ended a full outage
                    if self._slow_start:
                        self._start_ramp((self._states[b.url] for b in returned), now)
                    self._refresh(answered_by=backend, returned=returned)
                    if self._panic:
                        self._returned_in_panic(queued)
            else:
                # A failing status is an answer all the same: its latency is the time to its
                # head. A failure without a response (refused, timed out) has no head: it is in
                # neither the histogram nor the mean (a backend refusing in 0.2 ms is not fast).
                if latency is not None and status is not None:
                    if now >= state.fold_at:
                        _fold(state, now)
                    state.answers.append(latency)
                self._load.observe_failure(state.latency, now, state.health.consecutive_failures)
                state.failures += 1     # every failure, as requests counts every end
                if member:              # but only a member's health is judged, not a draining one's
                    if self._health.failure(state, now, latency):
                        self._timed = True
                        self._end_ramp(state, now)
                        self._refresh()
        finally:
            if self._events:
                self._post()

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
            owner = self._owner
            if owner is not None and owner.thread != threading.get_ident():
                self._deferred.append((backend, None, None, 0, 0, None))   # for the owner
                return
            self._release_now(backend)
        finally:
            lock.release()
        if self._outbox:
            self._deliver()

    def _finish(self, backend: Backend) -> BackendState | None:
        url = backend.url
        state = self._states.get(url)
        if state is None:
            state = self._draining.get(url)
            if state is None:
                return None       # removed, and its last request already ended
        if backend is not state.backend and self._retired.late(backend):
            return None         # an end of an ended incarnation of this URL
        if state.in_flight > 0:
            state.in_flight -= 1
            if self._follows:
                self._policy.finished(state)
            if not state.in_flight and url in self._draining:
                self._drained(url, state)
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
        self._deferred.append((backend, None, None, 0, 0, None))
        self._apply_later()

    def begin(self, key: str | None = None, exclude: Collection[Backend] = (),
              prefer: str | None = None, now: float | None = None) -> Completion:
        """:meth:`pick`, as a completion handle that ends exactly once: ``done(outcome)``
        reports, ``release()`` does not, a second end is ignored, and a handle dropped
        without an end is released (tower's completion handle). The attempt loop of every
        front-end (:class:`~lbmiddleware.core.attempts.Attempts`) picks through this."""
        return Completion(self, self.pick(key, exclude, prefer, now))

    # -- introspection ------------------------------------------------------------------

    @handed_over
    def lookup(self, key: str) -> Backend:
        """The backend that owns ``key`` now: the one ``pick(key=key)`` would return (among
        the healthy members; among all of them in panic) while that backend has room (under
        ``hash_balance_factor`` a pick whose owner is full goes on along the key's sequence;
        lookup ignores load), without a pick: nothing is counted in flight, no policy state
        moves, no event is sent. An ejection whose time is over counts as over, as it would
        for a pick.

        Only a keyed policy has owners: for ``ip_hash`` this is the key's home or, while the
        home is ejected, its fallback. Any other policy raises :class:`ConfigError` naming it;
        an empty pool raises :class:`NoHealthyBackend`.
        """
        if not self._base_policy.keyed:
            raise ConfigError(
                f"lookup() needs a keyed policy (ip_hash); this pool uses {self.policy}")
        with self._lock:
            self._mine()
            if not self._states:
                raise self._entries.no_backends()
            return self._policy.lookup(self._members_at(self._timer()), key).backend

    def _members_at(self, now: float) -> Members:
        """The members a pick at ``now`` would choose from, changing nothing."""
        if not self._health.due(now):
            return self._all if self._panic else self._healthy
        # Some ejection is over; a pick would end it first. A throwaway snapshot
        # (generation -1: no policy may cache it).
        usable = self._usable(tuple(self._states.values()), now)
        return Members(usable, -1) if usable else self._all

    @handed_over
    def stats(self) -> list[dict[str, Any]]:
        """Per backend, the members in listed order then the draining ones, one dict each:

        * ``url``, ``weight``, ``priority``, ``effective_weight`` (after slow start),
          ``source`` (the entry that lists it, None for static);
        * ``state``: draining, ejected, down (its active health checks failed, or it has not
          passed one yet), slow_start (its weight ramps; otherwise healthy or on probation),
          probation, healthy; ``state_age``: seconds since it last changed (since it joined,
          if never); ``ejection_left``, ``drain_left``: seconds until that ends (None when
          not ejected, not draining); ``ramp``: slow start's factor 0..1, None when not
          ramping (never while ejected or down: slow start waits for it to be usable);
          ``ejected_until``: a timer reading (compare with the pool's timer only);
        * counters since it joined: ``in_flight``, ``requests`` (attempts ended with an
          outcome), ``failures`` (those that failed, while draining too: ``requests -
          failures`` are the successes), ``consecutive_failures``, ``ejections``,
          ``bytes_sent``, ``bytes_received``;
        * ``latency``: the time-decayed mean latency of its answered attempts (seconds, None
          before the first answer); ``latency_estimate``: what the latency policy weighs
          (peak EWMA with failure penalties, decayed; None before any sample);
          ``latency_sum``, ``latency_count``, ``latency_buckets``: the histogram of the
          latencies of the answered attempts (as ``latency``), cumulative per bound of
          :data:`~lbmiddleware.core.load.LATENCY_BUCKETS` (``latency_count`` is +Inf's);
        * ``health_check``: None while checks are off, else status up/down/pending, last
          result, rise and fall progress and what is needed, ``checked_at``, ``checked_ago``,
          lifetime ``passes_total`` and ``fails_total``.

        The ages are what a person reads; the timer readings (``ejected_until``,
        ``checked_at``) stay for code that compares them with the pool's timer."""
        with self._lock:
            self._mine()
            now = self._catch_up()
            active, load = self._active, self._load
            rows = []
            for state in (*self._states.values(), *self._draining.values()):
                if state.answers:
                    _fold(state, now)
                rows.append(backend_row(state, now, active, load))
            self._post()
        self._deliver()
        return rows

    @handed_over
    def pool_stats(self) -> dict[str, Any]:
        """The pool as a whole: ``policy``; ``panic`` (no member usable: picks choose among
        all) and ``panic_age`` (seconds in it, None when not); ``members``; ``usable`` (the
        members a pick would choose from now, without panic); ``draining``; ``retries``
        (picks that excluded backends already tried: retries' picks, since the start);
        ``health_check`` (active checks on); ``slow_start`` (seconds, 0 when off);
        ``retry_budget`` (None when off, else ``ratio``, ``min_per_second``, ``ttl``, the
        ``requests`` and ``retries`` in its window, the retries ``available`` now and
        ``exhausted_total``, the retries it refused since the start); ``hash_overflows_total``
        (bounded-load ``ip_hash`` picks that left their key's full home, since the start).
        Cheap (no per-backend work) and thread-safe."""
        with self._lock:
            self._mine()
            now = self._catch_up()
            since = self._panic_since
            row = {
                "policy": self.settings.policy,
                "panic": self._panic,
                "panic_age": None if since is None else max(0.0, now - since),
                "members": len(self._states),
                "usable": len(self._healthy.states),
                "draining": len(self._draining),
                "retries": self._retries,
                "health_check": self._active is not None,
                "slow_start": self._slow_start,
                "retry_budget": None if self._budget is None else self._budget.stats(now),
                "hash_overflows_total": self._policy.overflows,
            }
            self._post()
        self._deliver()
        return row

    def _catch_up(self) -> float:
        """The timer's reading, once the deferred ends are applied and what is due by then
        is done (ejections over, drains timed out, ramps moved), so that a read sees the
        pool a pick would see now (call it holding the lock)."""
        if self._deferred:
            self._apply_deferred()
        now = self._timer()
        if self._timed:
            self._tick(now)
        return now

    # -- active health, events from above ---------------------------------------------

    def report_probe(self, backend: Backend | str, ok: bool, reason: str = "") -> None:
        """One active health check's result for ``backend`` (from the prober; thread-safe).

        HAProxy's rise/fall counter decides up and down (:mod:`.health.active`); a backend
        that joined later is picked only after its first pass. A pass also ends a passive
        ejection at once (Envoy). ``reason``: ``"status 503"``, ``"timeout after 2s"``,
        ``"connection refused"``... A result for a backend that is not a member (removed,
        draining) or while checks are off is ignored."""
        url = backend.url if isinstance(backend, Backend) else _url(backend)
        active = self._active
        prepared = None
        if ok and active is not None and self._keyed and self._tiered is None:
            # A joiner's first time up puts it in ip_hash's table: the table is built here,
            # outside the lock (a guess; if another change overtakes it, the policy rebuilds).
            joiner = self._states.get(url)
            if (joiner is not None and not joiner.tabled and joiner.active is not None
                    and joiner.active.joining and active.would_come_up(joiner.active)):
                prepared = self._policy.prepare([s.backend for s in self._table(joiner)])
        self._probed(url, ok, reason, prepared)

    @handed_over
    def _probed(self, url: str, ok: bool, reason: str, prepared: Any) -> None:
        """:meth:`report_probe`'s change, holding the lock."""
        active = self._active
        with self._lock:
            self._mine()
            if self._deferred:
                self._apply_deferred()
            state = self._states.get(url)
            if state is not None and active is not None and state.active is not None:
                now = self._timer()
                if self._timed:
                    self._tick(now)
                record = state.active
                was_up = record.up
                changed = active.result(record, state.backend, ok, reason, now)
                unejected = ok and self._health.uneject(state, now)
                if changed and not record.up:
                    self._end_ramp(state, now)          # Envoy: out of slow start when down
                elif unejected or (changed and record.up and not was_up):
                    self._start_ramp((state,), now)     # if usable now (up, not ejected)
                if changed and self._keyed and self._table() != self._table_now:
                    self._policy_members(prepared)
                if changed or unejected:
                    self._refresh()
            self._post()
        self._deliver()

    @handed_over
    def publish(self, event: Event) -> None:
        """Deliver ``event`` (a source's, from discovery above the core) to this pool's
        listeners, in order with the pool's own events. A source's outage is kept for the
        error of a pick from an empty pool."""
        with self._lock:
            self._mine()
            if isinstance(event, SourceFailed):
                self._entries.failing[event.source] = event.error
            elif isinstance(event, SourceRecovered):
                self._entries.failing.pop(event.source, None)
            self._events.append(event)
            self._post()
        self._deliver()

    def __repr__(self) -> str:
        return (f"<Balancer policy={self.settings.policy!r} "
                f"backends={[s.backend.url for s in self._states.values()]!r}>")

