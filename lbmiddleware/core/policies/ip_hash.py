"""``ip_hash``: sticky consistent hashing on a key, over a Maglev table, with an optional bound
on each backend's load (consistent hashing with bounded loads)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from heapq import heappop, heappush
from typing import Any

from ..backend import Backend
from ..hashing import DEFAULT_TABLE_SIZE, maglev_table, stable_hash
from ..load import PeakEwma
from ..state import BackendState, Members
from .base import Exclude, Policy
from .round_robin import RoundRobin

__all__ = ["IPHash"]

_NOTHING: frozenset[BackendState] = frozenset()
_NO_LIMIT = 1 << 62          # a share no pool reaches


class _Walk:
    """How far one key's overflows have walked its sequence, in one snapshot: the
    distinct eligible backends found in the sequence's order (``order[0]`` the key's first,
    its home or ejection fallback), the table slot of the last one found, and what is
    known of their loads. ``order[1:checked]`` were full when last looked at, but for
    ``holes`` (a heap of their indices where a request ended since: those may have room),
    and stay full while the pool's share of requests (``share`` in
    :meth:`IPHash._bounded`) is at most ``limit`` (the least of their
    ``in_flight * total_weight // weight`` when looked at). A pick resumes from the first
    hole with room, else from ``checked``, instead of from the key's home."""

    __slots__ = ("order", "index", "reach", "slot", "steps", "checked", "holes", "limit")

    def __init__(self, first: BackendState, slot: int, reach: int) -> None:
        self.order = [first]
        self.index = {first: 0}
        self.reach = reach           # the backends it may find (eligible, not excluded)
        self.slot = slot
        self.steps = 0               # table slots walked past the first's
        self.checked = 1
        self.holes: list[int] = []
        self.limit = _NO_LIMIT


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
    the total being the eligible members'. A key whose backend is full walks on along the
    probe sequence it follows when its backend is ejected, over the whole table (65,537
    slots, a prime: the walk reaches every slot), and takes the first backend that is not
    full; if all are full, the least loaded per unit of weight. The same key overflows
    the same way, and a key whose backend has room never moves. Each pick that lands
    elsewhere than it would without the bound counts in :attr:`overflows`. With c >= 100
    the eligible backends' slots add up to at least A + 1 while they hold at most A, so
    some backend has room: the bound holds at every pick but a retry's whose excluded
    backends are the only ones with room.

    Cost: one comparison per backend looked at. A key whose home has room costs what an
    unbounded pick does. One whose home is full walks its sequence, which its own requests
    fill as deep as the load it brings: ``k1`` with 53% of 1,000 requests in flight over
    1,000 backends (c = 125%: 2 slots each) fills about 290 of them. Listing the members
    after 64 probes, as this policy did, cost 23 us per pick (policy alone, the mean over
    every key; through the balancer 28 us, against 2.9 unbounded), and walking on along
    the sequence afresh at each pick would cost 14 us. So a walk past :attr:`walk_after`
    probes is kept (:class:`_Walk`, per key and snapshot, for the :attr:`max_walks` keys
    that went that deep most recently): a pick resumes at the first backend passed that a
    request has left since (an end adds it to the walks that passed it: a heap push), else
    where the last pick stopped, looking at one or two backends (2.4 us, policy alone;
    4.4 through the balancer). Work proportional to how deep the key has filled its
    sequence is still done, once, when a key first goes past its probes in a snapshot (the
    table walked: about 350 slots for 300 backends in the example, 25 us) and again
    whenever the pool's load grows enough to give the backends passed more slots (the
    backends found, looked at again from the first: 13 us). A retry (``exclude``) walks
    from the home every time, without a record.
    :meth:`lookup` ignores load: it names the key's home (or its ejection fallback),
    where the key goes whenever that backend has room.
    """

    name = "ip_hash"
    keyed = True
    max_probes = 64
    # Bounded load: probes an overflow walks afresh, then keys whose walk is kept.
    walk_after = 8
    max_walks = 64

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
        # Bounded load: the walks kept (key -> walk, oldest first), for which snapshot, and
        # per backend the walks that passed it (walk, its index in the walk's order).
        self._walks: dict[str, _Walk] = {}
        self._walks_generation = -1
        self._watchers: dict[BackendState, list[tuple[_Walk, int]]] = {}
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
        self._walks, self._watchers = {}, {}

    @property
    def follows_flight(self) -> bool:
        return self.counts_in_flight        # (bounded load only)

    def started(self, state: BackendState, now: float | None = None) -> None:
        if self.counts_in_flight and state in self._held:
            self._in_flight += 1

    def finished(self, state: BackendState) -> None:
        if self.counts_in_flight and state in self._held:
            if self._in_flight > 0:
                self._in_flight -= 1
            watchers = self._watchers.get(state)
            if watchers:
                for walk, index in watchers:       # it may have room now: a hole
                    if index < walk.checked:
                        heappush(walk.holes, index)

    def pick(self, members: Members, key: str | None, exclude: Exclude,
             now: float | None = None) -> BackendState:
        if key is None or not self._all:
            return self._round_robin.pick(members, key, exclude, now)
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
        """The first backend of the key's sequence (its home or ejection fallback, then on
        along its probes over the whole table) that is eligible, not excluded and not full;
        if all are full, the least loaded per unit of weight."""
        states, table, size = self._all, self._table, self.table_size
        # ceil((A + 1) * c / 100) requests in flight to share out, after this one.
        share = ((self._in_flight + 1) * self.balance_factor + 99) // 100
        total = members.total_weight
        eligible = members.set
        digest = stable_hash(key)
        slot = digest % size
        first = states[table[slot]]
        if first in eligible and first not in exclude:
            if first.in_flight * total < share * first.weight or not first.in_flight:
                return first
            skip = (digest >> 32) % (size - 1) + 1
        else:
            skip = (digest >> 32) % (size - 1) + 1
            for _ in range(self.max_probes):
                slot = (slot + skip) % size
                first = states[table[slot]]
                if first in eligible and first not in exclude:
                    break
            else:       # almost every member is out: the stable choice among those left
                return self._any_room(members, digest, exclude, share, None)
            if first.in_flight * total < share * first.weight or not first.in_flight:
                return first
        walk = None
        if not exclude:
            if members.generation != self._walks_generation:
                self._walks, self._watchers = {}, {}
                self._walks_generation = members.generation
            walk = self._walks.pop(key, None)
            if walk is not None:
                self._walks[key] = walk         # the most recently used, last
        if walk is None:
            probe = slot
            for _ in range(self.walk_after):
                probe = (probe + skip) % size
                state = states[table[probe]]
                if state in eligible and state not in exclude:
                    if state.in_flight * total < share * state.weight or not state.in_flight:
                        self.overflows += 1
                        return state
            # Deeper than its probes: a walk, kept for the next picks (a retry's is not).
            reach = len(members)
            if exclude:
                reach -= sum(1 for state in exclude if state in eligible)
            walk = _Walk(first, slot, reach)
            if not exclude:
                walks = self._walks
                if walks and len(walks) >= self.max_walks:
                    self._forget(walks.pop(next(iter(walks))))
                walks[key] = walk
        chosen = self._walk_on(walk, members, exclude, share, skip)
        if chosen is None:          # every backend it can reach is full
            return self._any_room(members, digest, exclude, share, first)
        self.overflows += 1
        return chosen

    def _walk_on(self, walk: _Walk, members: Members, exclude: Exclude, share: int,
                 skip: int) -> BackendState | None:
        """The first backend past ``walk.order[0]`` on the key's sequence that is not full
        (``walk`` says where to look: its holes, then from ``checked`` on); None when none
        it can reach has room."""
        total = members.total_weight
        order, holes = walk.order, walk.holes
        if share > walk.limit:
            # More slots than when the backends passed were found full: look at them again.
            walk.checked, walk.limit = 1, _NO_LIMIT
            holes.clear()
        while holes:
            state = order[holes[0]]
            flight = state.in_flight
            if flight * total < share * state.weight or not flight:
                return state
            heappop(holes)          # full again
            bound = flight * total // state.weight
            if bound < walk.limit:
                walk.limit = bound
        checked = walk.checked
        while True:
            if checked < len(order):
                state = order[checked]
            else:
                found = self._find(walk, members, exclude, skip)
                if found is None:
                    walk.checked = checked
                    return None
                state = found
            flight = state.in_flight
            if flight * total < share * state.weight or not flight:
                walk.checked = checked
                return state
            bound = flight * total // state.weight
            if bound < walk.limit:
                walk.limit = bound
            checked += 1

    def _find(self, walk: _Walk, members: Members, exclude: Exclude,
              skip: int) -> BackendState | None:
        """The next eligible backend, not excluded, that the walk has not found yet, added
        to its order (and, unless a retry's, to the backend's watchers); None once the walk
        has found as many as there are or gone round the whole table."""
        order, index = walk.order, walk.index
        if len(order) >= walk.reach:
            return None
        eligible = members.set
        states, table, size = self._all, self._table, self.table_size
        slot, steps = walk.slot, walk.steps
        while steps < size - 1:
            steps += 1
            slot += skip
            if slot >= size:
                slot -= size
            state = states[table[slot]]
            if state in eligible and state not in index and state not in exclude:
                walk.slot, walk.steps = slot, steps
                position = len(order)
                order.append(state)
                index[state] = position
                if not exclude:
                    self._watchers.setdefault(state, []).append((walk, position))
                return state
        walk.slot, walk.steps = slot, steps
        return None

    def _forget(self, walk: _Walk) -> None:
        """Take a walk no longer kept off its backends' watchers."""
        watchers = self._watchers
        for state in walk.order[1:]:
            kept = [entry for entry in watchers.get(state, ()) if entry[0] is not walk]
            if kept:
                watchers[state] = kept
            else:
                watchers.pop(state, None)

    def _any_room(self, members: Members, digest: int, exclude: Exclude, share: int,
                  first: BackendState | None) -> BackendState:
        """The rare ends: almost every member out (``first`` None: the stable choice
        :meth:`_home` makes, then the members from there), or none the sequence reaches
        with room (``first`` the key's first backend): the least loaded. O(N)."""
        candidates = [s for s in members.states if s not in exclude]
        start = digest % len(candidates)
        ordered = candidates[start:] + candidates[:start]
        home = ordered[0] if first is None else first
        total = members.total_weight
        chosen = next((s for s in ordered
                       if s.in_flight * total < share * s.weight or not s.in_flight), None)
        if chosen is None:
            chosen = min(ordered, key=lambda s: s.in_flight / s.weight)
        if chosen is not home:
            self.overflows += 1
        return chosen
