"""The policy interface: one ``pick()`` hook, optional hooks around it.

A policy chooses among ``members``, an immutable snapshot of the eligible backends in listed
order (see :class:`~lbmiddleware.core.state.Members`), skipping those in ``exclude``. It is
called under the balancer's lock, so it may keep state; it caches what it derives from a
snapshot and rebuilds it when ``members.generation`` changes. What it keeps per backend goes in
``BackendState.scratch``, which no other module writes. Every policy honours weights.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from typing import Any

from ..backend import Backend
from ..load import PeakEwma
from ..state import BackendState, Members

__all__ = ["Policy", "Exclude"]

Exclude = Collection[BackendState]


class Policy:
    """Base class: subclasses implement :meth:`pick`; the hooks are optional."""

    name = "policy"
    keyed = False        # True when pick(key=...) sticks a key to an owner (see lookup())
    counts_bytes = False  # True when the balancer must call transferred() (bandwidth)
    # True when pick() and started() read the time (latency, bandwidth): the balancer then
    # reads its timer once and passes the reading (``now``) to both.
    needs_time = False
    overflows = 0        # picks that left a key's full home (bounded-load ip_hash)
    # True when the policy counts the requests in flight on the backends it holds through
    # started()/finished() (bounded-load ip_hash): under tiers every instance that holds a
    # backend then hears of its starts and ends, not only the one that picked it.
    counts_in_flight = False

    def __init__(self, rng: random.Random, timer: Callable[[], float],
                 load: PeakEwma | None = None) -> None:
        self.rng = rng
        self.timer = timer
        self.load = load or PeakEwma()

    @property
    def follows_flight(self) -> bool:
        """Whether :meth:`started` and :meth:`finished` do anything (the balancer calls
        them only then): a policy that overrides either."""
        cls = type(self)
        return cls.started is not Policy.started or cls.finished is not Policy.finished

    def pick(self, members: Members, key: str | None, exclude: Exclude,
             now: float | None = None) -> BackendState:
        """Choose one state of ``members`` that is not in ``exclude`` (never empty).
        ``now``: the timer's reading when the balancer has one (None: read :attr:`timer`
        if the policy needs the time); so are the other hooks'."""
        raise NotImplementedError

    def lookup(self, members: Members, key: str) -> BackendState:
        """The state a pick with ``key`` among ``members`` would choose, changing nothing.
        Only a keyed policy implements it."""
        raise NotImplementedError(f"{self.name} is not a keyed policy")

    def started(self, state: BackendState, now: float | None = None) -> None:
        """A request to ``state`` began (its in_flight was incremented)."""

    def finished(self, state: BackendState) -> None:
        """A request to ``state`` ended (its in_flight was decremented)."""

    def transferred(self, state: BackendState, nbytes: int,
                    now: float | None = None) -> None:
        """An attempt on ``state`` moved ``nbytes`` body bytes (sent plus received); called
        only when :attr:`counts_bytes` is true, for an attempt with bytes (after its
        :meth:`finished`)."""

    def prepare(self, backends: Sequence[Backend]) -> Any:
        """Work that depends only on the new membership, done outside the balancer's lock
        (a hash table, say); its result is passed to :meth:`membership_changed`."""
        return None

    def membership_changed(self, states: Sequence[BackendState], prepared: Any = None) -> None:
        """The pool's members (not only the eligible ones) are now ``states``."""

    def _weighted_choice(self, members: Members, exclude: Exclude) -> BackendState:
        """Weighted random choice among members not excluded (O(N); the rare path)."""
        candidates = [s for s in members.states if s not in exclude]
        total = sum(s.weight for s in candidates)
        point = self.rng.random() * total
        for state in candidates:
            point -= state.weight
            if point < 0:
                return state
        return candidates[-1]
