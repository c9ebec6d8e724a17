"""When a source tries again: back-off after a failure, and the refresh delay after a success.

After a failure a source retries with gRPC's connection back-off
(grpc/doc/connection-backoff.md): the first retry after 1 s, each next one 1.6 times longer,
capped at 120 s, every delay spread by a uniform +-20% jitter around its base (as gRPC does, the
jitter applies after the cap: a delay at the cap lies in [96 s, 144 s]). The jitter keeps many
processes that lost the same registry from coming back in step.

After a success a DNS source refreshes when the answer's TTL runs out, clamped to
[``min_refresh``, ``max_refresh``] (a TTL of 0, or none known, means every ``min_refresh``),
spread by +-10% (SEMANTICS, "Membership from a registry"; Envoy's ``dns_jitter``).

Randomness is a ``random.Random`` passed in, so tests draw what they choose.
"""

from __future__ import annotations

import random

__all__ = ["Backoff", "refresh_delay", "INITIAL_BACKOFF", "BACKOFF_MULTIPLIER",
           "BACKOFF_JITTER", "MAX_BACKOFF", "REFRESH_JITTER"]

INITIAL_BACKOFF = 1.0      # seconds before the first retry
BACKOFF_MULTIPLIER = 1.6   # each retry waits this much longer than the one before
BACKOFF_JITTER = 0.2       # each delay is its base +-20%, uniformly
MAX_BACKOFF = 120.0        # the base never grows past this
REFRESH_JITTER = 0.1       # each refresh delay is its base +-10%, uniformly


def _spread(base: float, jitter: float, rng: random.Random) -> float:
    return base * (1.0 + jitter * (2.0 * rng.random() - 1.0))


class Backoff:
    """Delays between the retries of one outage: ``next()`` gives the next one and grows the
    base, ``reset()`` (on success) starts over at the initial delay.

    The bases run 1, 1.6, 2.56, 4.1, 6.55, ... 120, 120; each delay handed out is its base
    +-20%.
    """

    __slots__ = ("_rng", "initial", "multiplier", "jitter", "max_delay", "base", "retries")

    def __init__(self, *, rng: random.Random | None = None, initial: float = INITIAL_BACKOFF,
                 multiplier: float = BACKOFF_MULTIPLIER, jitter: float = BACKOFF_JITTER,
                 max_delay: float = MAX_BACKOFF) -> None:
        self._rng = rng if rng is not None else random.Random()
        self.initial = initial
        self.multiplier = multiplier
        self.jitter = jitter
        self.max_delay = max_delay
        self.base = initial        # the base of the next delay, before jitter
        self.retries = 0           # delays handed out since the last reset

    def next(self) -> float:
        """The delay before the next retry (seconds, jittered); the base then grows."""
        delay = _spread(self.base, self.jitter, self._rng)
        self.base = min(self.base * self.multiplier, self.max_delay)
        self.retries += 1
        return delay

    def reset(self) -> None:
        """The source answered: the next outage starts over at the initial delay."""
        self.base = self.initial
        self.retries = 0

    def __repr__(self) -> str:
        return f"Backoff(base={self.base:.3g}s, retries={self.retries})"


def refresh_delay(ttl: float | None, min_refresh: float, max_refresh: float,
                  rng: random.Random) -> float:
    """Seconds until a source that just answered asks again: the answer's ``ttl`` clamped to
    [``min_refresh``, ``max_refresh``] (0 or None: ``min_refresh``), then +-10% jitter."""
    if ttl is None or ttl <= 0:
        base = min_refresh
    else:
        base = min(max(ttl, min_refresh), max_refresh)
    return _spread(base, REFRESH_JITTER, rng)
