"""Load-balancing policies: one module per policy, each one class behind one ``pick()`` hook.

:mod:`.base` holds the interface; ``make_policy`` builds a policy from its validated name.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..load import PeakEwma
from .bandwidth import LeastBandwidth
from .base import Exclude, Policy
from .ip_hash import IPHash
from .latency import PeakEwmaP2C
from .least_conn import LeastConnections
from .round_robin import RoundRobin
from .weighted_random import WeightedRandom

__all__ = [
    "Policy", "Exclude", "RoundRobin", "WeightedRandom", "IPHash", "PeakEwmaP2C",
    "LeastConnections", "LeastBandwidth", "POLICY_CLASSES", "make_policy",
]

POLICY_CLASSES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (RoundRobin, WeightedRandom, IPHash, PeakEwmaP2C, LeastConnections,
                              LeastBandwidth)
}


def make_policy(name: str, rng: random.Random, timer: Callable[[], float],
                load: PeakEwma | None = None, *, hash_balance_factor: int = 0) -> Policy:
    """A fresh policy instance for a validated policy name; ``hash_balance_factor`` is
    ``ip_hash``'s bound (percent; 0: off)."""
    if name == IPHash.name:
        return IPHash(rng, timer, load, balance_factor=hash_balance_factor)
    return POLICY_CLASSES[name](rng, timer, load)
