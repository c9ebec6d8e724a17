"""``round_robin`` (alias ``weighted``): nginx's smooth weighted round-robin."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..load import PeakEwma
from ..state import BackendState, Members
from .base import Exclude, Policy

__all__ = ["RoundRobin"]


class RoundRobin(Policy):
    """nginx's smooth weighted round-robin, in O(number of distinct weights) per pick.

    nginx adds each weight to its backend's ``current`` and picks the largest, which then
    loses the total. With all backends in since the last reset, after t picks
    ``current = t * weight - total * picks``, so backends of equal weight are picked in
    listed order and only one per weight class can be the largest: comparing the head of
    each class gives the same sequence (ties to the first listed) without touching every
    backend. Weights 5, 3, 2 give ``a b c a a b a c b a`` and repeat. The sequence restarts
    when the eligible set changes, so the new set gets its exact proportions at once.
    """

    name = "round_robin"

    def __init__(self, rng: random.Random, timer: Callable[[], float],
                 load: PeakEwma | None = None) -> None:
        super().__init__(rng, timer, load)
        self._generation = -1
        # One entry per weight: [weight, members in listed order, picks, their positions]
        self._classes: list[list[Any]] = []
        self._rotation: list[Any] | None = None     # the one class, when there is one
        self._step = 0
        self._total = 0

    def _reset(self, members: Members) -> None:
        by_weight: dict[int, list[BackendState]] = {}
        for state in members.states:
            by_weight.setdefault(state.weight, []).append(state)
        if members.carry and self._classes:
            by_weight = self._carried(by_weight)
        position = {id(s): i for i, s in enumerate(members.states)}
        self._classes = [[w, states, 0, [position[id(s)] for s in states]]
                         for w, states in by_weight.items()]
        self._rotation = self._classes[0] if len(self._classes) == 1 else None
        self._generation = members.generation
        self._step = 0
        self._total = members.total_weight

    def _carried(self, by_weight: dict[int, list[BackendState]]
                 ) -> dict[int, list[BackendState]]:
        """Each new class rotated to start with the backend that was next in its old class:
        only weights changed (a slow start's step, every second or so), and starting every
        class again from its first listed backend would give the first ones all the picks
        of a pool picked less often than its rotation is long."""
        upcoming = {id(entry[1][entry[2] % len(entry[1])]) for entry in self._classes}
        rotated = {}
        for weight, states in by_weight.items():
            start = next((i for i, s in enumerate(states) if id(s) in upcoming), 0)
            rotated[weight] = states[start:] + states[:start]
        return rotated

    def pick(self, members: Members, key: str | None, exclude: Exclude,
             now: float | None = None) -> BackendState:
        if members.generation != self._generation:
            self._reset(members)
        if exclude:
            # A retry: walk the sequence to the next backend not tried yet (bounded), as nginx
            # skips the peers it has tried; fall back to a weighted choice.
            for _ in range(2 * len(members) + 2):
                following = self.pick(members, key, (), now)       # the sequence's next
                if following not in exclude:
                    return following
            return self._weighted_choice(members, exclude)
        # The sequence's next (here, not in a method of its own: a call less per request).
        rotation = self._rotation
        if rotation is not None:
            # One weight (every backend's, as a rule): the listed order, round and round.
            # (Its count wraps at the class's size instead of at the period: the same
            # position, and the step, which only weighs classes against each other, waits.)
            states = rotation[1]
            picks = rotation[2]
            rotation[2] = picks + 1 if picks + 1 < len(states) else 0
            single: BackendState = states[picks]
            return single
        classes = self._classes
        self._step += 1
        step, total = self._step, self._total
        best: Any = None
        best_current = best_position = 0
        for entry in classes:
            weight, states, picks, positions = entry
            size = len(states)
            current = step * weight - total * (picks // size)
            position = positions[picks % size]
            if best is None or current > best_current or (
                    current == best_current and position < best_position):
                best, best_current, best_position = entry, current, position
        picks = best[2]
        best[2] = picks + 1
        if self._step == total:           # one full period: every class back to its start
            self._step = 0
            for entry in classes:
                entry[2] = 0
        state: BackendState = best[1][picks % len(best[1])]
        return state
