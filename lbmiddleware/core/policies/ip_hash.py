"""``ip_hash``: sticky consistent hashing on a key, over a Maglev table."""

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

    def pick(self, members: Members, key: str | None, exclude: Exclude) -> BackendState:
        if key is None or not self._all:
            return self._round_robin.pick(members, key, exclude)
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
