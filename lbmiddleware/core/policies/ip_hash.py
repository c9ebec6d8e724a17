"""``ip_hash``: sticky consistent hashing on a key, over a Maglev table, with an optional bound
on each backend's load (consistent hashing with bounded loads)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from ..backend import Backend
from ..hashing import DEFAULT_TABLE_SIZE, maglev_table, stable_hash
from ..load import PeakEwma
from ..state import BackendState, Members
from .base import Exclude, Policy
from .round_robin import RoundRobin

__all__ = ["IPHash"]

_NOTHING: frozenset[BackendState] = frozenset()


def _url(backend: Backend) -> str:
    return backend.url


def _state_url(state: BackendState) -> str:
    return state.backend.url


class IPHash(Policy):
    """Sticky consistent hashing on a key (Maglev table over every member, O(1) lookup).

    The table covers all members, ejected ones included, so ejecting a backend moves only
    its own keys and they come back when it returns. A key whose backend is ejected or
    excluded walks a probe sequence derived from the key (double hashing over the table):
    the same key always lands on the same fallback. A request without a key is balanced
    by smooth weighted round-robin rather than sent to one backend.

    **Bounded load** (``balance_factor`` c, percent; 0: off; Mirrokni, Thorup and
    Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018; Envoy's and
    HAProxy's ``hash_balance_factor``). With A requests in flight on this instance's
    backends (counted by :meth:`started` and :meth:`finished`), a backend b may hold at
    most ``slots(b) = max(1, ceil(ceil((A + 1) * c / 100) * weight_b / total_weight))``,
    the total being the eligible members'. A key whose backend is full walks the same probe
    sequence as when its backend is ejected and takes the first backend that is not
    full, then the members in an order fixed by the key, and if all are full the least
    loaded per unit of weight: the same key overflows the same way, and a key whose
    backend has room never moves. Each pick that lands elsewhere than it would without
    the bound counts in :attr:`overflows`. With c >= 100 the eligible backends' slots
    add up to at least A + 1 while they hold at most A, so some backend has room: the
    bound holds at every pick but a retry's whose excluded backends are the only ones
    with room. O(1) per pick while the probes find room (one comparison per probe; the
    members are listed only when 64 probes did not).
    :meth:`lookup` ignores load: it names the key's home (or its ejection fallback),
    where the key goes whenever that backend has room.
    """

    name = "ip_hash"
    keyed = True
    max_probes = 64

    def __init__(self, rng: random.Random, timer: Callable[[], float],
                 load: PeakEwma | None = None, table_size: int = DEFAULT_TABLE_SIZE, *,
                 balance_factor: int = 0) -> None:
        super().__init__(rng, timer, load)
        self.table_size = table_size
        self.balance_factor = balance_factor      # percent; 0: no bound on a home's load
        self.counts_in_flight = balance_factor > 0
        self._in_flight = 0                       # A: requests in flight on _held
        self._held: frozenset[BackendState] = frozenset()
        self._round_robin = RoundRobin(rng, timer)
        self._all: tuple[BackendState, ...] = ()
        self._table: list[int] = []
        # (backends, table) as one value, read without the lock by prepare().
        self._prepared: tuple[tuple[Backend, ...], list[int]] = ((), [])

    def prepare(self, backends: Sequence[Backend]) -> tuple[tuple[Backend, ...], list[int]]:
        """The table for ``backends`` (safe without the balancer's lock): the current one
        when they are the same, in any order, else a new one (the slow part, ~35 ms at
        65,537 slots). Kept in the order of their URLs, the order the table is built in."""
        backends = tuple(sorted(backends, key=_url))
        current = self._prepared
        if current[0] == backends:
            return current
        return backends, maglev_table([b.url for b in backends], [b.weight for b in backends],
                                      self.table_size)

    def membership_changed(self, states: Sequence[BackendState], prepared: Any = None) -> None:
        """A table prepared for other backends (a guess that another change overtook) is
        rebuilt here; the same backends keep the table they have."""
        states = tuple(sorted(states, key=_state_url))
        backends = tuple(s.backend for s in states)
        if prepared is None or prepared[0] != backends:
            prepared = self.prepare(backends)
        self._prepared = prepared
        self._table = prepared[1]
        self._all = states
        self._held = frozenset(states)
        self._in_flight = sum(s.in_flight for s in states)

    def started(self, state: BackendState) -> None:
        if self.counts_in_flight and state in self._held:
            self._in_flight += 1

    def finished(self, state: BackendState) -> None:
        if self.counts_in_flight and state in self._held and self._in_flight > 0:
            self._in_flight -= 1

    def pick(self, members: Members, key: str | None, exclude: Exclude) -> BackendState:
        if key is None or not self._all:
            return self._round_robin.pick(members, key, exclude)
        if self.balance_factor:
            return self._bounded(members, key, exclude)
        return self._home(members, key, exclude)

    def lookup(self, members: Members, key: str) -> BackendState:
        return self._home(members, key, _NOTHING)

    def _home(self, members: Members, key: str, exclude: Exclude) -> BackendState:
        """The key's slot, or the first eligible one on its probe sequence (changes nothing)."""
        states, table, size = self._all, self._table, self.table_size
        digest = stable_hash(key)
        slot = digest % size
        state = states[table[slot]]
        eligible = members.set
        if state in eligible and state not in exclude:
            return state
        skip = (digest >> 32) % (size - 1) + 1
        for _ in range(self.max_probes):
            slot = (slot + skip) % size
            state = states[table[slot]]
            if state in eligible and state not in exclude:
                return state
        # Almost every member is out: a stable choice among those left.
        candidates = [s for s in members.states if s not in exclude]
        return candidates[digest % len(candidates)]

    def _bounded(self, members: Members, key: str, exclude: Exclude) -> BackendState:
        """The first backend of the key's sequence (its home, its probes, then every member
        from a point the key fixes) that is eligible, not excluded and not full; if all are
        full, the least loaded per unit of weight."""
        states, table, size = self._all, self._table, self.table_size
        # ceil((A + 1) * c / 100) requests in flight to share out, after this one.
        share = ((self._in_flight + 1) * self.balance_factor + 99) // 100
        total = members.total_weight
        eligible = members.set
        digest = stable_hash(key)
        slot = digest % size
        state = states[table[slot]]
        first = None            # where the pick would go without the bound
        if state in eligible and state not in exclude:
            if state.in_flight * total < share * state.weight or not state.in_flight:
                return state
            first = state
        skip = (digest >> 32) % (size - 1) + 1
        for _ in range(self.max_probes):
            slot = (slot + skip) % size
            state = states[table[slot]]
            if state in eligible and state not in exclude:
                if state.in_flight * total < share * state.weight or not state.in_flight:
                    if first is not None and state is not first:
                        self.overflows += 1
                    return state
                if first is None:
                    first = state
        return self._any_room(members, digest, exclude, share, first)

    def _any_room(self, members: Members, digest: int, exclude: Exclude, share: int,
                  first: BackendState | None) -> BackendState:
        """The rare end of the sequence: the members from a point the key fixes (O(N))."""
        candidates = [s for s in members.states if s not in exclude]
        start = digest % len(candidates)
        ordered = candidates[start:] + candidates[:start]
        if first is None:
            first = ordered[0]          # the stable choice the pick makes without a bound
        total = members.total_weight
        chosen = next((s for s in ordered
                       if s.in_flight * total < share * s.weight or not s.in_flight), None)
        if chosen is None:
            chosen = min(ordered, key=lambda s: s.in_flight / s.weight)
        if chosen is not first:
            self.overflows += 1
        return chosen
