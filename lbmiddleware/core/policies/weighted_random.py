"""``random``: weighted random choice."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable

from ..load import PeakEwma
from ..state import BackendState, Members
from .base import Exclude, Policy

__all__ = ["WeightedRandom"]


class WeightedRandom(Policy):
    """Weighted random: a binary search in the cumulative weights, O(log N)."""

    name = "random"

    def __init__(self, rng: random.Random, timer: Callable[[], float],
                 load: PeakEwma | None = None) -> None:
        super().__init__(rng, timer, load)
        self._generation = -1
        self._cumulative: list[int] = []

    def pick(self, members: Members, key: str | None, exclude: Exclude,
             now: float | None = None) -> BackendState:
        if members.generation != self._generation:
            self._cumulative = list(itertools.accumulate(s.weight for s in members.states))
            self._generation = members.generation
        states, cumulative = members.states, self._cumulative
        for _ in range(4):
            point = self.rng.random() * cumulative[-1]
            state = states[bisect.bisect_right(cumulative, point)]
            if state not in exclude:
                return state
        return self._weighted_choice(members, exclude)
