"""Tiers (priority levels): how much of the traffic each one takes, and which one a pick uses.

Envoy's priority levels with its overprovisioning factor F (nginx's and HAProxy's ``backup``
is tier 1). A tier P of ``members`` backends of which ``usable`` may be picked (active health
up, not ejected; draining backends are not members) is worth
``health = min(100, floor(100 * F * usable / members))`` percent. Loads are handed out in
priority order, each tier taking ``min(100 - earlier loads, health)``, and whatever is left
after the last tier goes to the first tier with a usable backend. So tier 0 takes everything
while at least 1/F (71.4% for F = 1.4) of it is usable, 70% at half (the rest spills to tier
1), and a backup tier takes nothing while the primaries are fine. F > 1 because a tier that
lost a few backends can still carry its load: spilling at the first loss would send traffic
to a cold, possibly remote, backup for no reason.

No tier with a usable backend is a total outage: every load is 0 and the caller panics over
all backends, as with one tier. Loads are computed when health or membership changes, not
per pick; a pick only draws a point in [0, 100) (at random, or from a key's hash so a sticky
key keeps its tier) and looks it up with :func:`draw_tier`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import ConfigError

__all__ = ["tier_loads", "draw_tier"]

# 100 * F * usable / members in floats can fall a hair below the integer it is (100 * 2.3 * 2 / 5
# gives 91.999...): the rule floors the exact value, so nudge before flooring.
_EPSILON = 1e-9


def tier_loads(counts: Sequence[tuple[int, int]], overprovisioning: float) -> tuple[int, ...]:
    """Percent of the picks each tier takes, given ``(members, usable)`` per tier in priority
    order: integers summing to 100, or all 0 when no tier has a usable backend (panic)."""
    _check_factor(overprovisioning)
    if not counts:
        raise ValueError("no tier: give (members, usable) for at least one")
    loads = []
    left = 100
    first_usable = -1
    for tier, (members, usable) in enumerate(counts):
        _check_counts(tier, members, usable)
        if usable and first_usable < 0:
            first_usable = tier
        health = 0
        if usable:
            health = min(100, math.floor(100 * overprovisioning * usable / members + _EPSILON))
        load = min(left, health)
        loads.append(load)
        left -= load
    if first_usable < 0:
        return tuple(0 for _ in counts)
    loads[first_usable] += left
    return tuple(loads)


def draw_tier(loads: Sequence[int], point: float) -> int:
    """The tier whose share of [0, 100) holds ``point`` (tiers with load 0 hold none)."""
    if not 0.0 <= point < 100.0:
        raise ValueError(f"point {point!r} is outside [0, 100)")
    end = 0
    for tier, load in enumerate(loads):
        end += load
        if point < end:
            return tier
    if not end:
        raise ValueError(f"loads {tuple(loads)!r} are all 0 (panic): no tier to draw from")
    raise ValueError(f"loads {tuple(loads)!r} sum to {end}, not 100: point {point!r} is in none")


def _check_factor(factor: float) -> None:
    if not (math.isfinite(factor) and factor >= 1.0):
        raise ConfigError(f"overprovisioning has value {factor!r}: "
                          f"not a finite factor of 1.0 or more")


def _check_counts(tier: int, members: int, usable: int) -> None:
    for value in (members, usable):
        if type(value) is not int or value < 0:
            raise ValueError(f"tier {tier} has counts {(members, usable)!r}: "
                             f"not whole numbers of backends (0 or more)")
    if usable > members:
        raise ValueError(f"tier {tier} has counts {(members, usable)!r}: "
                         f"more usable backends than members")
