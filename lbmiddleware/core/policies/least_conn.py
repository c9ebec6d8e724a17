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

# A heap entry: (in_flight / weight, turn, sequence, state). The sequence makes every entry
# unique, so two entries never compare their states.
_Entry = tuple[float, float, int, BackendState]


class LeastConnections(Policy):
    """Fewest in-flight requests per unit of weight; ties go by weighted round-robin (nginx).

    A heap ordered by ``(in_flight / weight, turn)`` with lazy invalidation gives the least
    loaded backend in O(log N): every in-flight change pushes a fresh entry, which becomes
    the backend's live entry (its ``scratch``), and entries that are no longer live are
    dropped when they reach the top. ``turn`` is stride scheduling's virtual time: each pick
    advances the backend's turn by ``1 / weight``, so among equally loaded backends the
    picks rotate in proportion to the weights.
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

    @staticmethod
    def _turn(state: BackendState) -> float:
        live: _Entry | None = state.scratch
        return live[1] if live is not None else 0.0

    def _rebuild(self, members: Members) -> None:
        sequence = self._sequence
        heap = []
        for state in members.states:
            entry = (state.in_flight / state.weight, self._turn(state), next(sequence), state)
            state.scratch = entry
            heap.append(entry)
        heapq.heapify(heap)
        self._heap = heap
        self._generation = members.generation
        self._size = len(members)

    def started(self, state: BackendState) -> None:
        live: _Entry | None = state.scratch
        turn = live[1] if live is not None else 0.0
        if turn < self._virtual_time:
            turn = self._virtual_time
        self._virtual_time = turn
        weight = state.weight
        entry = (state.in_flight / weight, turn + 1.0 / weight, next(self._sequence), state)
        state.scratch = entry
        heap = self._heap
        if heap and heap[0][3] is state:
            heapq.heapreplace(heap, entry)     # its old entry was on top: replace in one step
        else:
            heapq.heappush(heap, entry)

    def finished(self, state: BackendState) -> None:
        # A backend banks no turns while it is busy: when it finishes it rejoins the tie
        # rotation at the back. Otherwise a slow backend, picked less often, holds an old
        # turn and wins the next tie it meets (balance benchmark, scenario 3: p99 95-98 ms
        # -> 91-92 ms); with one request at a time the weighted rotation is unchanged.
        weight = state.weight
        live: _Entry | None = state.scratch
        turn = live[1] if live is not None else 0.0
        back = self._virtual_time + 1.0 / weight
        if turn < back:
            turn = back
        entry = (state.in_flight / weight, turn, next(self._sequence), state)
        state.scratch = entry
        heap = self._heap
        heapq.heappush(heap, entry)
        if len(heap) > 4 * self._size + 64:
            self._generation = -1       # too many stale entries: rebuild on the next pick

    def pick(self, members: Members, key: str | None, exclude: Exclude) -> BackendState:
        if members.generation != self._generation:
            self._rebuild(members)
        heap = self._heap
        eligible = members.set
        set_aside = []
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
            chosen = state
            break
        for entry in set_aside:
            heapq.heappush(heap, entry)
        if chosen is None:               # every live entry excluded or dropped: rebuild
            self._rebuild(members)
            turn = self._turn
            chosen = min((s for s in members.states if s not in exclude),
                         key=lambda s: (s.in_flight / s.weight, turn(s)))
        return chosen
