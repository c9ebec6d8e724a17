"""``least_conn``: fewest in-flight requests per unit of weight (nginx ``least_conn``)."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

from ..load import PeakEwma
from ..state import BackendState, Members
from .base import Exclude, Policy

__all__ = ["LeastConnections"]

# A heap entry: (in_flight / weight, tie key, sequence, state, turn, doubt). The sequence
# makes every entry unique, so two entries never compare their states. The tie key orders
# equally loaded backends: the turn while the backend is idle, minus the sequence while it
# is busy (see LeastConnections). ``doubt`` is _doubt(state) when its latest request started.
_Entry = tuple[float, float, int, BackendState, float, int]


def _doubt(state: BackendState) -> int:
    """Why passive health doubts ``state`` now: its failures in a row, -1 on probation
    with none yet, 0 when it is steady (no failure counted, not on probation)."""
    health = state.health
    if health.steady:
        return 0
    return health.consecutive_failures or (-1 if health.probation else 0)


class LeastConnections(Policy):
    """Fewest in-flight requests per unit of weight; ties go by weighted round-robin (nginx).

    A heap ordered by ``(in_flight / weight, tie key)`` with lazy invalidation gives the
    least loaded backend in O(log N): every in-flight change pushes a fresh entry, which
    becomes the backend's live entry (its ``scratch``), and entries that are no longer live
    are dropped when they reach the top.

    Ties between idle backends (nothing in flight) go by stride scheduling's virtual time,
    the ``turn``: each pick advances the backend's turn by ``1 / weight``, so the picks
    rotate in proportion to the weights, exactly so for one request at a time; a backend
    that finishes a request rejoins that rotation at the back. Ties between busy backends
    go to the one whose latest start or end is the most recent: the one that has shown no
    sign of life for the longest is the likeliest to be slow. Ordered by turn, it had
    taken no turn for the longest and won every such tie (balance benchmark, scenario 3:
    p99 91-92 ms -> 80-81 ms).

    A backend that passive health doubts (a failure in a row, or on probation) takes one
    request at a time until an outcome comes back: while the request it got since its
    latest failure is out, it counts as the most loaded. A backend refusing connections
    has nothing in flight, so least connections otherwise sends it every request until
    its refusals come back (scenario 4: 4-6 client errors before its ejection over ten
    seeds, now 4, the floor of max_fails and the probe; without ejection its share of the
    traffic 85% -> 50%).
    """

    name = "least_conn"

    def __init__(self, rng: random.Random, timer: Callable[[], float],
                 load: PeakEwma | None = None) -> None:
        super().__init__(rng, timer, load)
        self._generation = -1
        self._heap: list[_Entry] = []
        self._virtual_time = 0.0
        self._sequence = itertools.count()
        self._size = 0

    def _rebuild(self, members: Members) -> None:
        sequence = self._sequence
        heap = []
        for state in members.states:
            live: _Entry | None = state.scratch
            if live is None:
                entry = (state.in_flight / state.weight, 0.0, next(sequence), state, 0.0, 0)
            else:       # the same keys: a rebuild changes no order
                entry = (state.in_flight / state.weight, live[1], next(sequence), state,
                         live[4], live[5])
            state.scratch = entry
            heap.append(entry)
        heapq.heapify(heap)
        self._heap = heap
        self._generation = members.generation
        self._size = len(members)

    def started(self, state: BackendState, now: float | None = None) -> None:
        live: _Entry | None = state.scratch
        turn = live[4] if live is not None else 0.0
        if turn < self._virtual_time:
            turn = self._virtual_time
        self._virtual_time = turn
        weight = state.weight
        sequence = next(self._sequence)
        entry = (state.in_flight / weight, -sequence, sequence, state, turn + 1.0 / weight,
                 0 if state.health.steady else _doubt(state))
        state.scratch = entry
        heap = self._heap
        if heap and heap[0][3] is state:
            heapq.heapreplace(heap, entry)     # its old entry was on top: replace in one step
        else:
            heapq.heappush(heap, entry)

    def finished(self, state: BackendState) -> None:
        weight = state.weight
        live: _Entry | None = state.scratch
        turn = live[4] if live is not None else 0.0
        sequence = next(self._sequence)
        key: float
        if state.in_flight:
            key = -sequence
        else:
            # Idle again: it rejoins the tie rotation at the back (with one request at a
            # time its turn is there already, and the weighted rotation is unchanged).
            back = self._virtual_time + 1.0 / weight
            if turn < back:
                turn = back
            key = turn
        entry = (state.in_flight / weight, key, sequence, state, turn,
                 live[5] if live is not None else 0)
        state.scratch = entry
        heap = self._heap
        heapq.heappush(heap, entry)
        if len(heap) > 4 * self._size + 64:
            self._generation = -1       # too many stale entries: rebuild on the next pick

    def pick(self, members: Members, key: str | None, exclude: Exclude,
             now: float | None = None) -> BackendState:
        if members.generation != self._generation:
            self._rebuild(members)
        heap = self._heap
        eligible = members.set
        set_aside = []
        held = None
        chosen = None
        while heap:
            entry = heap[0]
            state = entry[3]
            if state.scratch is not entry or state not in eligible:
                heapq.heappop(heap)      # no longer live, or not eligible any more
                continue
            if exclude and state in exclude:
                set_aside.append(heapq.heappop(heap))
                continue
            if not state.health.steady and entry[5] and entry[5] == _doubt(state) \
                    and state.in_flight:
                # Doubted, and the request it got since its latest failure is still out.
                set_aside.append(heapq.heappop(heap))
                if held is None:
                    held = state
                continue
            chosen = state
            break
        for entry in set_aside:
            heapq.heappush(heap, entry)
        if chosen is None:
            chosen = held
        if chosen is None:               # every live entry excluded or dropped: rebuild
            self._rebuild(members)
            chosen = min((s for s in members.states if s not in exclude),
                         key=lambda s: s.scratch[:2])
        return chosen
